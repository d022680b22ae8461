"""The encoder's ``cuda_graph`` option (``segman/models/cuda_graph.py``) on CUDA: training steps replayed
from CUDA graphs give the eager steps' outputs and gradients, see in-place optimizer updates, keep
accumulated gradients, and fall back to eager calls (eval, no grad, another input shape).  Skipped
without CUDA."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from segman.models import segman_encoder

from model_testing import assert_same_gradients, relative_error as _rel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

SHAPE = (2, 3, 224, 256)


@pytest.fixture(autouse=True)
def _default_tiles(monkeypatch):
    monkeypatch.setenv("SEGMAN_NA_TRITON_AUTOTUNE", "0")  # no autotuning: quick, and no timing-dependent tiles


@contextlib.contextmanager
def no_tf32():
    """fp32 matmuls and convolutions without TF32 (results to compare closely), restored afterwards."""
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


@pytest.fixture(scope="module")
def pair():
    """An eager SegMAN-T backbone and a graphed copy with the same weights (fp32, TF32 off)."""
    with no_tf32():
        torch.manual_seed(0)
        eager = segman_encoder("t", backbone=True).cuda().train()
        graphed = segman_encoder("t", backbone=True, cuda_graph=True).cuda().train()
        graphed.load_state_dict(eager.state_dict(), strict=True)
        weights = [torch.randn(SHAPE[0], c, SHAPE[2] // s, SHAPE[3] // s, device="cuda")
                   for c, s in zip(eager.embed_dims, (4, 8, 16, 32))]
        yield eager, graphed, weights


def _loss(features, weights):
    return sum((f.float() * w).mean() for f, w in zip(features, weights))


def test_steps_match_eager_with_sgd_updates_and_accumulation(pair):
    eager, graphed, weights = pair
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, graphed)]
    for step in range(3):
        img = torch.randn(SHAPE, device="cuda")
        outs = []
        for model, opt in zip((eager, graphed), opts):
            opt.zero_grad(set_to_none=step != 1)  # step 1 zeroes in place: graphs must not alias .grad
            out = model(img)
            outs.append([o.detach().clone() for o in out])  # the next replay overwrites graphed outputs
            _loss(out, weights).backward()
            if step == 2:  # a second micro-batch accumulates into the same gradients
                _loss(model(img.flip(-1)), weights).backward()
        assert graphed.training_graph.captured
        for i, (a, b) in enumerate(zip(outs[1], outs[0])):
            assert _rel(a, b) < 1e-5, f"step {step}: output {i} differs by {_rel(a, b):.2e}"
        assert_same_gradients(graphed, eager, f"step {step}")
        for opt in opts:
            opt.step()  # in place: the graph reads the updated parameters on the next replay
    for a, b in zip(graphed.parameters(), eager.parameters()):
        assert _rel(a.detach(), b.detach()) < 1e-5 or (a - b).abs().max() < 1e-6


def test_eval_no_grad_and_other_shapes_run_eagerly(pair):
    eager, graphed, _ = pair
    img = torch.randn(SHAPE, device="cuda")
    for model in (eager, graphed):  # captures (if the other test did not run first); same BatchNorm updates
        model(img)
    eager.eval(), graphed.eval()
    with torch.no_grad():
        for a, b in zip(graphed(img), eager(img)):
            assert _rel(a, b) < 1e-5, "eval: BatchNorm statistics differ"
    eager.train(), graphed.train()
    with torch.no_grad():
        for a, b in zip(graphed(img), eager(img)):
            assert _rel(a, b) < 1e-5
    other = torch.randn(1, 3, 256, 224, device="cuda")
    with pytest.warns(UserWarning, match="runs eagerly"):
        out = graphed(other)
    assert [o.shape for o in out] == [o.shape for o in eager(other)]


def test_autocast_with_weight_cache_and_copies():
    torch.manual_seed(1)
    model = segman_encoder("t", backbone=True, cuda_graph=True).cuda().train()
    twin = copy.deepcopy(model)  # a copy (e.g. an EMA model) starts uncaptured and graphs itself
    img = torch.randn(SHAPE, device="cuda")
    for m in (model, twin):
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):  # cache_enabled=True, the default
                out = m(img)
            assert out[0].dtype == torch.bfloat16
            sum(o.float().mean() for o in out).backward()
        assert m.training_graph.captured
    assert twin.training_graph._owner is twin
    reference = copy.deepcopy(model)
    reference.training_graph = None
    exact = copy.deepcopy(reference)
    for m in (model, reference, exact):
        m.zero_grad(set_to_none=True)
    for m in (model, reference):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sum(o.float().mean() for o in m(img)).backward()
    with no_tf32():
        sum(o.float().mean() for o in exact(img)).backward()
    # Graphed and eager bf16 gradients are not always bitwise equal: on an H100 each model lands on
    # one of two rounding variants (4.41e-2 or 4.84e-2 from fp32, all parameters together), so the
    # two differ by 5e-2 in some processes and by 4e-8 in others.  The graphed gradients are held to
    # the eager ones' accuracy against fp32 instead, all parameters together and each parameter
    # (measured: at most 1.8x the eager error); a wrong gradient (a stale weight copy, a missed
    # update) breaks that, rounding does not.
    grads = [torch.cat([p.grad.flatten().float() for p in m.parameters()]) for m in (model, reference, exact)]
    graph_error, eager_error = _rel(grads[0], grads[2]), _rel(grads[1], grads[2])
    assert graph_error < 1.25 * eager_error, f"vs fp32: graphed {graph_error:.2e}, eager {eager_error:.2e}"
    for (name, a), b, c in zip(model.named_parameters(), reference.parameters(), exact.parameters()):
        ratio = _rel(a.grad, c.grad) / max(_rel(b.grad, c.grad), 1e-2)
        assert ratio < 3.0, f"{name}: graphed error against fp32 {ratio:.2f}x the eager one"


def test_backward_through_an_overwritten_replay_is_refused(pair):
    _, graphed, weights = pair
    img = torch.randn(SHAPE, device="cuda")
    first = graphed(img)
    second = graphed(img)  # overwrites the first replay's outputs and saved activations
    with pytest.raises(RuntimeError, match="before the next training forward"):
        _loss(first, weights).backward()
    _loss(second, weights).backward()
    assert any(p.grad is not None for p in graphed.parameters())


def test_gradient_checkpointing_with_stochastic_depth_in_the_graph():
    """Checkpointed blocks recompute inside the captured backward. Their stochastic-depth scales are
    drawn before each checkpoint, so the capture stashes no RNG state (which a capture forbids) and
    the replayed recomputation uses the forward's scales: outputs and gradients equal those of the
    same graphed model without checkpointing, step after step, at the same seeds."""
    with no_tf32():
        models = []
        for use_checkpoint in ((0, 0, 0, 0), (2, 2, 2, 2)):
            torch.manual_seed(3)
            models.append(segman_encoder("t", backbone=True, cuda_graph=True, drop_path_rate=0.3,
                                         use_checkpoint=use_checkpoint).cuda().train())
        plain, ckpt = models
        img = torch.randn(SHAPE, device="cuda")
        for step in range(3):
            outs = []
            for model in models:
                model.zero_grad(set_to_none=True)
                torch.cuda.manual_seed(11 + step)
                out = model(img)
                outs.append([o.detach().clone() for o in out])
                sum(o.square().mean() for o in out).backward()
            assert plain.training_graph.captured and ckpt.training_graph.captured
            for i, (a, b) in enumerate(zip(*outs)):
                assert _rel(b, a) < 1e-5, f"step {step}: output {i} differs by {_rel(b, a):.2e}"
            assert_same_gradients(ckpt, plain, f"step {step}")
        torch.cuda.manual_seed(99)
        assert _rel(ckpt(img)[-1].detach(), outs[1][-1]) > 1e-3, "another seed must drop other blocks"
