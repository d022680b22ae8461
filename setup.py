"""Installs the ``segman`` library and the ``segman_mmseg`` plugin (``pip install -e .``).

The CUDA selective-scan extension is a separate package: ``pip install kernels/selective_scan``.
The test suite's needs are the ``test`` extra: ``pip install -e ".[test]"``; ONNX export and onnxruntime
(``segman.export``, ``tools/pytorch2onnx.py``) are the ``deploy`` extra.
"""
from setuptools import find_packages, setup

setup(
    name="segman",
    version="0.1.0",
    description="SegMAN semantic segmentation (CVPR 2025): models, ops and mmseg 0.30 plugin",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["segman", "segman.*"])
    + find_packages("segmentation", include=["segman_mmseg", "segman_mmseg.*"]),
    package_dir={"segman_mmseg": "segmentation/segman_mmseg"},
    install_requires=["torch>=2.1", "timm>=1.0", "einops"],
    # `pip install -e ".[test,deploy]"`; `make test` installs both
    extras_require={"test": ["pytest>=8"],
                    "deploy": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"]},
)
