"""``torch.compile`` of SegMAN-T and -S on the GPU, block by block as the tools compile it
(``compile_regions``): compiled, and compiled with CUDA-graph replay (``mode="reduce-overhead"``), give
eager's loss and gradients (fp32, tightly; bf16 autocast, as close to fp32 as eager is) and eager's
bf16 logits.  Skipped without CUDA."""
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


def _loss(model, img, label, loss_fn=_resized_loss, bf16=True):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        return loss_fn(model(img), label)


def _model(variant: str) -> SegMAN:
    torch.manual_seed(0)
    return SegMAN(variant, num_classes=19, dropout_ratio=0.0).cuda()


@pytest.fixture
def _no_tf32():
    """fp32 matrix products in fp32 (not TF32), in eager and in the kernels Inductor generates."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _compiled_training(eager, mode, img, label, bf16):
    """Loss and gradient of a compiled copy of ``eager`` after three steps (reduce-overhead records on
    the second call and replays from the third)."""
    compiled = compile_regions(copy.deepcopy(eager), mode=mode)
    loss_fn = torch.compile(_resized_loss, fullgraph=True, mode=mode)
    for _ in range(3):
        compiled.zero_grad(set_to_none=True)
        loss = _loss(compiled, img, label, loss_fn, bf16)
        loss.backward()
    return float(loss), _gradient(compiled)


def _eager_training(eager, img, label, bf16):
    model = copy.deepcopy(eager)
    loss = _loss(model, img, label, bf16=bf16)
    loss.backward()
    return float(loss), _gradient(model)


def _inputs():
    return (torch.randn(2, 3, 256, 320, device="cuda"), torch.randint(0, 19, (2, 256, 320), device="cuda"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["t", "s"])
def test_compiled_training_matches_eager(variant, mode, _no_tf32):
    """In fp32 the compiled model differs from eager by reassociation only: a tight bound finds a wrong
    gradient that bf16 rounding would hide."""
    eager, (img, label) = _model(variant).train(), _inputs()
    loss, gradient = _compiled_training(eager, mode, img, label, bf16=False)
    reference, reference_gradient = _eager_training(eager, img, label, bf16=False)
    assert abs(loss - reference) < 1e-4 * abs(reference)
    # one vector: biases followed by BatchNorm have a true gradient of zero, so per tensor they are noise
    assert _rel(gradient, reference_gradient) < 2e-3


@pytest.mark.parametrize("variant", ["t", "s"])
def test_compiled_bf16_training_is_as_accurate_as_eager(variant, _no_tf32):
    """Under bf16 autocast, eager's own gradient is about 20% (relative) away from fp32's for a freshly
    initialised model, so compiled and eager are each compared with fp32, not with each other."""
    eager, (img, label) = _model(variant).train(), _inputs()
    _, exact = _eager_training(eager, img, label, bf16=False)
    eager_loss, eager_gradient = _eager_training(eager, img, label, bf16=True)
    loss, gradient = _compiled_training(eager, "default", img, label, bf16=True)
    assert abs(loss - eager_loss) < 2e-2 * abs(eager_loss)
    assert _rel(gradient, exact) < 1.5 * _rel(eager_gradient, exact) + 1e-2


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
