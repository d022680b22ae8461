"""``torch.compile`` of SegMAN-T and -S on the GPU (bf16 autocast): compiled, and compiled with CUDA-graph
replay (``mode="reduce-overhead"``), give eager's logits, loss and gradients within bf16 tolerance.
Skipped without CUDA."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from segman.models import SegMAN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
MODES = {"compile": {}, "compile-cg": {"mode": "reduce-overhead"}}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _loss(model, img, label):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = F.interpolate(model(img), size=label.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, label)


def _model(variant: str) -> SegMAN:
    torch.manual_seed(0)
    return SegMAN(variant, num_classes=19, dropout_ratio=0.0).cuda()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant", ["t", "s"])
def test_compiled_training_matches_eager(variant, mode):
    eager = _model(variant).train()
    compiled = copy.deepcopy(eager)
    img = torch.randn(2, 3, 256, 320, device="cuda")
    label = torch.randint(0, 19, (2, 256, 320), device="cuda")
    step = torch.compile(_loss, fullgraph=True, **MODES[mode])
    for _ in range(3):  # reduce-overhead records on the second call and replays from the third
        compiled.zero_grad(set_to_none=True)
        loss = step(compiled, img, label)
        loss.backward()
    reference = _loss(eager, img, label)
    reference.backward()
    assert abs(float(loss) - float(reference)) < 2e-2 * abs(float(reference))
    worst = max((_rel(q.grad, p.grad), name) for (name, p), q in zip(eager.named_parameters(), compiled.parameters())
                if p.grad is not None and p.grad.norm() > 0)
    assert worst[0] < 0.1, f"gradient of {worst[1]} differs by {worst[0]:.2e}"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant", ["t", "s"])
def test_compiled_inference_matches_eager(variant, mode):
    model = _model(variant).eval()
    img = torch.randn(1, 3, 512, 512, device="cuda")
    predict = torch.compile(model, fullgraph=True, **MODES[mode])
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference = model(img).float()
        for _ in range(3):
            out = predict(img).float()
    assert _rel(out, reference) < 2e-2
