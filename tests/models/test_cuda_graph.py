"""``segman/models/cuda_graph.py`` without a GPU: the replay node's gradients, their average over
two processes (gloo) and its guard (with stand-ins for the two CUDA graphs), and the rules for
distributed runs.  The captures themselves are tested in test_cuda_graph_gpu.py and
test_cuda_graph_ddp_gpu.py."""
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from segman.models import SegMANEncoder
from segman.models.cuda_graph import GraphKey, _CapturedStep, graphed_parameters, leave_to_graphs, release_graphs

from model_testing import TINY, TINY_INPUT


def _stand_in_step(w: nn.Parameter, unused: nn.Parameter, resets: list | None = None) -> _CapturedStep:
    """A "captured" ``y = w * x`` whose graphs are Python functions writing the static buffers
    (``reset()`` appends the graph's name to ``resets``)."""
    resets = [] if resets is None else resets
    x, y, grad_y = torch.zeros(3), torch.zeros(3, requires_grad=True), torch.zeros(3)
    grad_w = torch.zeros(3)
    forward = SimpleNamespace(replay=lambda: y.data.copy_(w.detach() * x), reset=lambda: resets.append("forward"))
    backward = SimpleNamespace(replay=lambda: grad_w.copy_(grad_y * x), reset=lambda: resets.append("backward"))
    key = GraphKey.of(x)
    return _CapturedStep(key, forward, backward, x, [y], [grad_y], [w, unused], [grad_w, None])


def test_replayed_gradients_are_fresh_and_accumulate():
    w, unused = nn.Parameter(torch.tensor([1.0, 2.0, 3.0])), nn.Parameter(torch.ones(2))
    step = _stand_in_step(w, unused)
    (y,) = step(torch.tensor([4.0, 5.0, 6.0]), average=False)
    torch.testing.assert_close(y, torch.tensor([4.0, 10.0, 18.0]))
    (y * torch.tensor([1.0, 0.0, 2.0])).sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([4.0, 0.0, 12.0]))
    assert unused.grad is None
    assert w.grad.data_ptr() != step.grads[0].data_ptr()  # .grad is a copy, not the static buffer
    (y2,) = step(torch.tensor([1.0, 1.0, 1.0]), average=False)  # the next replay rewrites the static gradient...
    y2.sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([5.0, 1.0, 13.0]))  # ...and .grad accumulated on top
    w.grad.zero_()
    (y3,) = step(torch.tensor([2.0, 2.0, 2.0]), average=False)
    y3.sum().backward()
    torch.testing.assert_close(w.grad, torch.tensor([2.0, 2.0, 2.0]))  # in-place zeroing kept


def _averaging_worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
        step = _stand_in_step(w, nn.Parameter(torch.ones(1)))
        (y,) = step(torch.tensor([1.0, 2.0, 3.0]) * (rank + 1), average=True)  # rank 0: x, rank 1: 2x
        y.sum().backward()
        torch.testing.assert_close(w.grad, torch.tensor([1.5, 3.0, 4.5]))  # the mean of x and 2x
    finally:
        dist.destroy_process_group()


def test_replayed_gradients_are_averaged_over_the_ranks(tmp_path):
    mp.spawn(_averaging_worker, args=(str(tmp_path / "init"),), nprocs=2, join=True)


def test_backward_after_a_later_replay_is_refused():
    w = nn.Parameter(torch.ones(3))
    step = _stand_in_step(w, nn.Parameter(torch.ones(1)))
    (first,) = step(torch.ones(3), average=False)
    (second,) = step(torch.ones(3), average=False)  # overwrote the first replay's outputs and activations
    with pytest.raises(RuntimeError, match="replay 1 after replay 2.*before the next training forward"):
        first.sum().backward()
    second.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(3))


def test_release_graphs_frees_the_captured_step():
    """What trainers call before destroying the process group (live graphs with NCCL calls hang it)."""
    model = nn.Sequential(SegMANEncoder(**TINY, backbone=True, cuda_graph=True))
    resets = []
    model[0].training_graph._step = _stand_in_step(nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(1)), resets)
    assert model[0].training_graph.captured
    release_graphs(model)
    assert not model[0].training_graph.captured and resets == ["forward", "backward"]
    release_graphs(model)  # nothing captured: nothing to do
    assert resets == ["forward", "backward"]


def test_graphed_parameters_and_leave_to_graphs_outside_distributed_runs():
    model = nn.Sequential(SegMANEncoder(**TINY, backbone=True, cuda_graph=True), nn.Conv2d(3, 3, 1))
    graphed = graphed_parameters(model)
    assert list(graphed) == [f"0.{n}" for n, _ in model[0].named_parameters()]
    assert leave_to_graphs(model) == {}  # single process: nothing to do
    assert not model[0].training_graph.averages_gradients
    assert not hasattr(model, "_ddp_params_and_buffers_to_ignore")


def test_distributed_steps_that_cannot_replay_are_refused():
    """Once the graphs average the gradients (DDP skips them), an eager training step would leave its
    gradients unaveraged: refused.  Eval and no-grad calls still run eagerly."""
    model = SegMANEncoder(**TINY, backbone=True, cuda_graph=True)
    model.training_graph.averages_gradients = True
    x = torch.randn(1, 3, TINY_INPUT, TINY_INPUT)
    with pytest.raises(RuntimeError, match="cannot replay \\(its input is on the CPU\\).*not be averaged"):
        model.train()(x)
    with torch.no_grad():
        model(x)
    model.eval()(x)


def test_a_failed_capture_says_what_to_do(monkeypatch):
    def broken_capture(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(_CapturedStep, "capture", broken_capture)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))  # reach the capture without a GPU
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    model = SegMANEncoder(**TINY, backbone=True, cuda_graph=True).train()
    with pytest.raises(RuntimeError, match="capturing the training step of SegMANEncoder failed "
                                           "\\(operation not permitted.*\\). Train without cuda_graph"):
        model(torch.randn(1, 3, TINY_INPUT, TINY_INPUT))


def test_distributed_capture_needs_leave_to_graphs(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    model = SegMANEncoder(**TINY, backbone=True, cuda_graph=True).train()
    x = torch.randn(1, 3, TINY_INPUT, TINY_INPUT)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))  # reach the capture without a GPU
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with pytest.raises(RuntimeError, match="call segman.models.cuda_graph.leave_to_graphs\\(model\\) before"):
        model(x)
