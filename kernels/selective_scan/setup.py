"""Builds ``segman_selective_scan``: the optional CUDA selective-scan kernels of ``segman.ops``.

    pip install --no-build-isolation kernels/selective_scan     # needs torch and nvcc (CUDA >= 11.8)

Target GPUs: sm_80 (A100), sm_86 (RTX 30xx / A6000), sm_89 (L40 / RTX 40xx) and sm_90 (H100/H200)
by default, each as machine code, plus compute_90 PTX for newer cards.  Override with
``SEGMAN_CUDA_ARCHS="90"`` (semicolon- or comma-separated compute capabilities without the dot;
a trailing ``+PTX`` also embeds PTX for the last one).  ``MAX_JOBS`` sets the parallel compile jobs.
No ``--use_fast_math``: the kernels call the hardware approximations they want (``ex2.approx`` in
softplus, sigmoid and the decay, ``rcp.approx``) and keep ``log1p`` accurate.
"""
import os
import re

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _gencode_flags() -> list[str]:
    spec = os.environ.get("SEGMAN_CUDA_ARCHS", "80;86;89;90+PTX")
    archs = [a for a in re.split(r"[;,\s]+", spec.strip()) if a]
    flags = []
    for arch in archs:
        ptx = arch.endswith("+PTX")
        cc = arch.replace("+PTX", "").replace(".", "")
        if not cc.isdigit():
            raise ValueError(f"SEGMAN_CUDA_ARCHS: cannot parse {arch!r} (expected e.g. '80;86;90')")
        flags.append(f"-gencode=arch=compute_{cc},code=sm_{cc}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{cc},code=compute_{cc}")
    return flags


setup(
    name="segman_selective_scan",
    version="0.1.0",
    description="CUDA selective scan (forward and backward) for segman.ops",
    packages=["segman_selective_scan"],
    ext_modules=[
        CUDAExtension(
            name="segman_selective_scan._C",
            sources=[os.path.join("csrc", f) for f in (
                "selective_scan.cpp", "selective_scan_fp32.cu", "selective_scan_fp16.cu", "selective_scan_bf16.cu")],
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={
                "cxx": ["-O3"],
                "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo",
                         "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                         "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                         "-Xptxas=-v" if os.environ.get("SEGMAN_PTXAS_VERBOSE") else "-Xptxas=-O3",
                         *_gencode_flags()],
            },
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch"],
)
