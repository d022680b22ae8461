"""SegMAN on CUDA: the automatically selected GPU backends (Triton NA, CUDA or Triton scan, Triton
cross-scan/merge) give the same logits and gradients as the torch reference backends, for the whole
model (encoder stages 1-3 with neighborhood attention, stage 4 global attention, MMSC decoder).

Op-level GPU tests compare each kernel with float64 loops; this one checks the wiring: layouts,
strides and dtypes as the model passes them (a wiring error shows as an O(1) difference; the
kernels' own fp32 errors are ~1e-6).  Skipped without CUDA.
"""
from __future__ import annotations

import pytest
import torch

from segman.models import SegMAN
from segman.ops import force_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


def _logits_and_grads(model, img, backend):
    model.zero_grad(set_to_none=True)
    with force_backend(backend):
        logits = model(img)
        logits.square().mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("variant", ["t", "s"])
def test_gpu_backends_match_the_torch_reference(variant, monkeypatch):
    monkeypatch.setenv("SEGMAN_NA_TRITON_AUTOTUNE", "0")  # default tiles: no timing-dependent choice
    torch.manual_seed(0)
    model = SegMAN(variant, num_classes=19).cuda().eval()  # eval: BatchNorm uses running statistics
    img = torch.randn(2, 3, 224, 256, device="cuda")  # the smallest input the encoder accepts is 224²
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        out, grads = _logits_and_grads(model, img, None)
        ref, ref_grads = _logits_and_grads(model, img, "torch")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    assert out.shape == (2, 19, 28, 32)
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < 1e-4
    assert grads.keys() == ref_grads.keys() and len(grads) > 100
    names = sorted(grads)
    flat = [torch.cat([g[n].flatten() for n in names]) for g in (grads, ref_grads)]
    assert _rel(*flat) < 1e-3
    scale = max(float(g.norm()) for g in ref_grads.values())
    for name in names:  # every parameter whose gradient is not negligibly small
        if float(ref_grads[name].norm()) > 1e-6 * scale:
            assert _rel(grads[name], ref_grads[name]) < 1e-2, name
