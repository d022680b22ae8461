"""Shared helpers of the model tests: a tiny encoder that runs in milliseconds on a CPU."""
import functools
import zipfile

import torch

from segman.models import segman_encoder

# windows of 3 need a 96 px input (3 tokens at 1/32); head dims are multiples of 4 for RoPE
TINY = dict(embed_dims=(8, 16, 16, 16), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 2), window_sizes=(3, 3, 3, 3),
            mlp_ratios=(2, 2, 2, 2))
TINY_INPUT = 96


@functools.lru_cache(maxsize=None)
def meta_encoder(variant: str, backbone: bool):
    """A full-size encoder on the meta device (shapes only, no memory), built once per session."""
    with torch.device("meta"):
        return segman_encoder(variant, backbone=backbone)


def shapes(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


class Opaque:
    """An arbitrary pickled object: ``torch.load(weights_only=True)`` refuses files that hold one."""


def rename_in_pickle(path, old: bytes, new: bytes) -> None:
    """Rewrite the pickle inside a ``torch.save`` zip file, e.g. to fake an older module name.

    ``torch.save`` pickles with protocol 2, whose GLOBAL opcode stores names as plain text.
    """
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name, data in entries:
            dst.writestr(name, data.replace(old, new) if name.endswith("data.pkl") else data)
