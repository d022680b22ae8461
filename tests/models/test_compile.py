"""``torch.compile`` of the segmentor on the CPU: no graph breaks, and compiled equals eager.

Dynamo traces the full SegMAN-T (training and inference) and must find no graph break; Inductor then
compiles a one-block-per-stage SegMAN with every code path of the full one (local and global mixers,
the SSM branch, the MMSC decoder): whole for an inference, block by block as the tools compile it
(``compile_regions``, ``fullgraph=True`` per block) for a training step.  Both must equal eager within
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


def _resized_loss(logits, label):
    """Cross-entropy on the logits resized to the label, as mmseg trains."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, label)


def _loss(model, image, label):
    return _resized_loss(model(image), label)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_segman_t_traces_without_graph_breaks(training):
    model = _segmentor().train(training)
    image, label = _batch()
    explained = torch._dynamo.explain(_loss)(model, image, label)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def _max_rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def _gradient(model) -> torch.Tensor:
    """All parameter gradients as one float64 vector."""
    return torch.cat([p.grad.double().flatten() for p in model.parameters()])


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def test_compiled_training_step_equals_eager():
    """Loss, gradients and BatchNorm statistics of one compiled step against eager and a float64 step.

    Inductor reorders float32 sums, so the compiled gradient must be as close to the float64 one as
    eager's is (compared as one vector: biases followed by BatchNorm have a true gradient of zero)."""
    from segman.models import compile_regions

    eager = _segmentor(**SMALL).train()
    compiled, exact = copy.deepcopy(eager), copy.deepcopy(eager).double()
    image, label = _batch()
    compile_regions(compiled)
    loss = torch.compile(_resized_loss, fullgraph=True)(compiled(image), label)
    loss.backward()
    reference = _loss(eager, image, label)
    reference.backward()
    _loss(exact, image.double(), label).backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in compiled.parameters())
    truth = _gradient(exact)
    compiled_error, eager_error = _rel(_gradient(compiled), truth), _rel(_gradient(eager), truth)
    assert compiled_error < max(4 * eager_error, 1e-5), (compiled_error, eager_error)
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


def test_compile_regions_compiles_each_block_in_place():
    """Every encoder block and the decoder are compiled (the decoder's SSM block with it); the keys and
    the outputs stay those of the plain model."""
    from segman.models import MMSCHead, VSSMBlock, compile_regions
    from segman.models.encoder import Block

    model = _segmentor(**SMALL).eval()
    keys = list(model.state_dict())
    image, _ = _batch()
    with torch.no_grad():
        reference = model(image)
        assert compile_regions(model, backend="eager") is model
        out = model(image)
    compiled = {type(m) for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert compiled == {Block, MMSCHead}
    assert getattr(model.decode_head.vssm, "_compiled_call_impl", None) is None  # compiled inside the decoder
    assert isinstance(model.decode_head.vssm, VSSMBlock)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(out, reference)
    with pytest.raises(ValueError, match="holds no SegMAN block"):
        compile_regions(torch.nn.Linear(2, 2))
