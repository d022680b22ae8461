"""``cuda_graph`` under DistributedDataParallel on two GPUs: the graphs average the encoder's gradients
themselves (``leave_to_graphs``), with BatchNorm and with SyncBatchNorm (collectives inside the
graphs), and the steps match eager DDP's.  Skipped with fewer than two GPUs."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from segman.models import segman_encoder
from segman.models.cuda_graph import leave_to_graphs, release_graphs

from model_testing import assert_same_gradients, relative_error as _rel

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

WORLD = 2
SHAPE = (2, 3, 224, 256)


class _Segmentor(nn.Module):
    """A SegMAN-T backbone (graphed or not) and an eager 1×1-conv head on its last map."""

    def __init__(self, graphed: bool) -> None:
        super().__init__()
        self.backbone = segman_encoder("t", backbone=True, cuda_graph=graphed)
        self.head = nn.Conv2d(self.backbone.embed_dims[-1], 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1])


def _worker(rank: int, init_file: str, sync_bn: bool) -> None:
    os.environ["SEGMAN_NA_TRITON_AUTOTUNE"] = "0"
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    models = {}
    try:
        for graphed in (False, True):
            torch.manual_seed(rank)  # different weights per rank: DDP and leave_to_graphs take rank 0's
            model = _Segmentor(graphed).cuda().train()
            if sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            left = leave_to_graphs(model)
            assert len(left) == (len(list(model.backbone.parameters())) if graphed else 0)
            models[graphed] = nn.parallel.DistributedDataParallel(model, device_ids=[rank])
        eager, graph = models[False], models[True]
        for a, b in zip(graph.parameters(), eager.parameters()):
            assert torch.equal(a, b), "the graphed model does not start from rank 0's weights"
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.1) for k, m in models.items()}
        torch.manual_seed(100 + rank)  # each rank its own data
        for step in range(3):
            img = torch.randn(SHAPE, device="cuda")
            outs = {}
            for graphed, model in models.items():
                opts[graphed].zero_grad(set_to_none=True)
                out = model(img)
                outs[graphed] = out.detach().clone()
                (out.float() ** 2).mean().backward()
            assert graph.module.backbone.training_graph.captured
            # after SGD steps (lr 0.1) the two models' weights drift apart by rounding: 1e-5 at step 1
            rtol = 1e-5 if step == 0 else 1e-4
            assert _rel(outs[True], outs[False]) < rtol, f"rank {rank} step {step}: outputs differ"
            assert_same_gradients(graph, eager, f"rank {rank} step {step}", rtol)
            for name, a in graph.named_parameters():
                gathered = [torch.empty_like(a.grad) for _ in range(WORLD)]
                dist.all_gather(gathered, a.grad)
                assert torch.equal(gathered[0], gathered[1]), f"gradient of {name} differs between ranks"
            for opt in opts.values():
                opt.step()
        for (name, a), b in zip(graph.named_parameters(), eager.parameters()):
            assert _rel(a.detach(), b.detach()) < 1e-4 or float((a - b).abs().max()) < 1e-4, f"rank {rank}: {name}"
    finally:
        for model in models.values():
            release_graphs(model)  # destroying the process group would hang on live graphs with NCCL calls
        dist.destroy_process_group()


@pytest.mark.parametrize("sync_bn", [False, True], ids=["BatchNorm", "SyncBatchNorm"])
def test_graphed_ddp_steps_match_eager_ddp(sync_bn, tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), sync_bn), nprocs=WORLD, join=True)
