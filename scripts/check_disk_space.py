"""Stop ``make install`` before it starts when the disk cannot hold the environment.

The virtual environment takes about 6 GB: torch 2.14.1 is a CUDA build and brings 3-4 GB of NVIDIA
libraries even on machines without a GPU.  On a disk with less room, pip fails minutes into the
install with ``OSError: [Errno 28] No space left on device`` and leaves a half-filled environment;
this check says so at once, with the numbers and what to do.  A re-run over an environment that
already holds torch needs far less.

Usage: python scripts/check_disk_space.py VENV_DIR [--need-gib 7] [--need-gib-with-torch 1]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

GIB = 1024 ** 3


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (where a new environment would be created)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def has_torch(venv: Path) -> bool:
    return any(venv.glob("lib/python3*/site-packages/torch/__init__.py"))


def shortfall(venv: Path, need_gib: float, need_gib_with_torch: float) -> str | None:
    """Why ``venv`` cannot be filled (a message), or None when its disk has room."""
    need = need_gib_with_torch if has_torch(venv) else need_gib
    where = existing_parent(venv)
    free = shutil.disk_usage(where).free / GIB
    if free >= need:
        return None
    return (f"segman install: {free:.1f} GiB free on the disk of {where}, where the environment {venv} goes; "
            f"installing torch 2.14.1 (a CUDA build with its NVIDIA libraries), mmcv-full and the rest needs about "
            f"{need:g} GiB. Free some space (old virtual environments, ~/.cache/pip), or put the environment on a "
            f"larger disk: make VENV=/path/on/larger/disk/venv test")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("venv", type=Path)
    parser.add_argument("--need-gib", type=float, default=7.0, help="free space a new environment needs")
    parser.add_argument("--need-gib-with-torch", type=float, default=1.0,
                        help="free space a re-run needs once torch is installed")
    args = parser.parse_args(argv)
    message = shortfall(args.venv, args.need_gib, args.need_gib_with_torch)
    if message:
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
