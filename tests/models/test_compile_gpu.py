"""``torch.compile`` of SegMAN-T and -S on the GPU (bf16 autocast), block by block as the tools compile
it (``compile_regions``): compiled, and compiled with CUDA-graph replay (``mode="reduce-overhead"``),
give eager's logits, loss and gradients within bf16 tolerance.  Skipped without CUDA."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from segman.models import SegMAN, compile_regions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
MODES = ("default", "reduce-overhead")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _gradient(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _resized_loss(logits, label):
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, label)


def _loss(model, img, label, loss_fn=_resized_loss):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return loss_fn(model(img), label)


def _model(variant: str) -> SegMAN:
    torch.manual_seed(0)
    return SegMAN(variant, num_classes=19, dropout_ratio=0.0).cuda()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["t", "s"])
def test_compiled_training_matches_eager(variant, mode):
    eager = _model(variant).train()
    compiled = compile_regions(copy.deepcopy(eager), mode=mode)
    img = torch.randn(2, 3, 256, 320, device="cuda")
    label = torch.randint(0, 19, (2, 256, 320), device="cuda")
    loss_fn = torch.compile(_resized_loss, fullgraph=True, mode=mode)
    for _ in range(3):  # reduce-overhead records on the second call and replays from the third
        compiled.zero_grad(set_to_none=True)
        loss = _loss(compiled, img, label, loss_fn)
        loss.backward()
    reference = _loss(eager, img, label)
    reference.backward()
    assert abs(float(loss) - float(reference)) < 2e-2 * abs(float(reference))
    # one vector: biases followed by BatchNorm have a true gradient of zero, so per tensor they are noise
    assert _rel(_gradient(compiled), _gradient(eager)) < 5e-2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["t", "s"])
def test_compiled_inference_matches_eager(variant, mode):
    model = _model(variant).eval()
    img = torch.randn(1, 3, 512, 512, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference = model(img).float()
        compile_regions(model, mode=mode)
        for _ in range(3):
            out = model(img).float().clone()
    assert _rel(out, reference) < 2e-2
