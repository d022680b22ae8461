"""Build (once) and install mmcv-full 1.7.2 with its CPU ops against the installed torch.

mmcv-full 1.7.2 ships only a source distribution, and its ``setup.py`` compiles the ops with
``-std=c++17`` while the headers of torch >= 2.10 need C++20, so the published sdist no longer
builds.  This script builds a wheel from an unpacked copy of the sdist with that one flag raised,
caches the wheel under ``~/.cache/segman/wheels/<key>/`` keyed by mmcv, torch and Python versions
(pip's own wheel cache does not key on torch, so it would silently reuse a wheel built against
another torch) and installs it.  Nothing in site-packages is edited.

Usage: python scripts/install_mmcv.py [--cache-dir DIR] [--jobs N] [--sdist mmcv-full-1.7.2.tar.gz]
(``--sdist`` builds from a downloaded source distribution, for machines without a package index.)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MMCV_VERSION = "1.7.2"
SDIST_NAME = f"mmcv-full-{MMCV_VERSION}"


def _pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def cache_key() -> str:
    """``mmcv-full-1.7.2_torch-2.14.1_cp311_x86_64``: everything the compiled ops depend on."""
    import torch

    torch_version = torch.__version__.split("+")[0]
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"{SDIST_NAME}_torch-{torch_version}_{py}_{platform.machine()}"


def _marker() -> Path:
    """Records, inside the virtual environment, which build key the installed mmcv-full came from."""
    return Path(sys.prefix) / "segman-mmcv-build-key"


def installed_mmcv_matches() -> bool:
    """True when the installed mmcv-full was built for the current torch and Python."""
    try:
        import mmcv  # noqa: F401
    except ImportError:
        return False
    return _marker().is_file() and _marker().read_text().strip() == cache_key()


def build_wheel(out_dir: Path, jobs: int, sdist: Path | None = None) -> Path:
    """Raise -std=c++17 to c++20 in the sdist (downloaded unless given) and build a wheel with CPU ops."""
    with tempfile.TemporaryDirectory(prefix="mmcv-build-") as tmp:
        tmp_path = Path(tmp)
        if sdist is None:
            _pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                 f"mmcv-full=={MMCV_VERSION}", "-d", str(tmp_path))
            sdist = tmp_path / f"{SDIST_NAME}.tar.gz"
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp_path, filter="data")
        src = tmp_path / SDIST_NAME
        setup_py = src / "setup.py"
        text = setup_py.read_text()
        if "-std=c++17" not in text:
            raise RuntimeError(f"{setup_py} no longer passes -std=c++17; update this recipe")
        setup_py.write_text(text.replace("-std=c++17", "-std=c++20"))
        env = dict(os.environ, MMCV_WITH_OPS="1", FORCE_CUDA="0", MAX_JOBS=str(jobs),
                   CUDA_VISIBLE_DEVICES="")
        subprocess.check_call([sys.executable, "-m", "pip", "wheel", "--no-deps",
                               "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                              env=env)
        wheels = list((tmp_path / "dist").glob("mmcv_full-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one mmcv wheel, found {wheels}")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / wheels[0].name
        shutil.copy2(wheels[0], target)
        return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("SEGMAN_CACHE", Path.home() / ".cache" / "segman")))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sdist", type=Path, default=None, help=f"local {SDIST_NAME}.tar.gz (offline builds)")
    args = parser.parse_args()

    key = cache_key()
    if installed_mmcv_matches():
        print(f"mmcv-full already installed for {key}")
        return
    wheel_dir = args.cache_dir / "wheels" / key
    wheels = sorted(wheel_dir.glob("mmcv_full-*.whl"))
    if wheels:
        wheel = wheels[-1]
        print(f"using cached wheel {wheel}")
    else:
        print(f"building {SDIST_NAME} for {key} (about 12 minutes on 2 cores, once per torch version)")
        wheel = build_wheel(wheel_dir, args.jobs, args.sdist)
    _pip("install", "--no-deps", "--force-reinstall", str(wheel))
    _marker().write_text(key + "\n")
    print(f"installed {wheel.name}")


if __name__ == "__main__":
    main()
