"""``torch.compile`` of the segmentor on the CPU: no graph breaks, and compiled equals eager.

Dynamo traces the full SegMAN-T (training and inference) and must find no graph break; Inductor then
compiles a one-block-per-stage SegMAN with every code path of the full one (local and global mixers,
the SSM branch, the MMSC decoder) for a training step and an inference, which must equal eager within
float32 tolerance.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from segman.models import SegMAN

SMALL = dict(depths=(1, 1, 1, 1))  # SegMAN-T widths, one block per stage: a quicker Inductor compile
INPUT = 224  # the released variants' smallest input


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _segmentor(**kwargs) -> SegMAN:
    torch.manual_seed(0)
    return SegMAN("t", num_classes=5, dropout_ratio=0.0, **kwargs)


def _batch():
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, INPUT, INPUT, generator=generator)
    label = torch.randint(0, 5, (2, INPUT, INPUT), generator=generator)
    return image, label


def _loss(model, image, label):
    """Cross-entropy on the logits resized to the label, as mmseg trains."""
    logits = F.interpolate(model(image), size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, label)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_segman_t_traces_without_graph_breaks(training):
    model = _segmentor().train(training)
    image, label = _batch()
    explained = torch._dynamo.explain(_loss)(model, image, label)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def _max_rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def _rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-12))


def test_compiled_training_step_equals_eager():
    eager = _segmentor(**SMALL).train()
    compiled = copy.deepcopy(eager)
    image, label = _batch()
    step = torch.compile(_loss, fullgraph=True)
    loss = step(compiled, image, label)
    loss.backward()
    reference = _loss(eager, image, label)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert q.grad is not None and torch.isfinite(q.grad).all(), name
        # float32 sums reordered by Inductor, through every layer and training-mode BatchNorm
        assert _rel_l2(q.grad, p.grad) < 1e-3, f"{name}: gradient differs by {_rel_l2(q.grad, p.grad):.1e}"
        assert _max_rel(q.grad, p.grad) < 1e-2, f"{name}: gradient differs by {_max_rel(q.grad, p.grad):.1e}"
    for (name, b), c in zip(eager.named_buffers(), compiled.buffers()):  # BatchNorm statistics
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_inference_equals_eager():
    model = _segmentor(**SMALL).eval()
    image, _ = _batch()
    with torch.no_grad():
        out = torch.compile(model, fullgraph=True)(image)
        reference = model(image)
    assert out.shape == (2, 5, INPUT // 8, INPUT // 8)
    assert _max_rel(out, reference) < 1e-4
