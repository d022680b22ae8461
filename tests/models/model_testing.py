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
    """A full-size encoder on the meta device (shapes only, no memory), built once per test process."""
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


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def assert_same_gradients(model: torch.nn.Module, reference: torch.nn.Module, what: str, rtol: float = 1e-5) -> None:
    """Every parameter's gradient within ``rtol`` relative (or 1e-6 absolute) of the reference's; the
    biases of the convolutions in front of BatchNorm (``dwconv.0``) have zero gradient up to
    rounding, so theirs need only be within 1e-3 of their weight's gradient (norms)."""
    grads = {name: p.grad for name, p in reference.named_parameters()}
    for name, p in model.named_parameters():
        a, b = p.grad, grads[name]
        assert (a is None) == (b is None), f"{what}: {name} has a gradient in one model only"
        if a is None:
            continue
        if name.endswith("dwconv.0.bias"):
            ok = float((a - b).norm()) <= 1e-3 * float(grads[name[:-len("bias")] + "weight"].norm())
        else:
            ok = relative_error(a, b) < rtol or float((a - b).abs().max()) < 1e-6
        assert ok, f"{what}: gradient of {name} differs (relative error {relative_error(a, b):.2e})"
