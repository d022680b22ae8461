"""``torch.compile`` for SegMAN models, one repeated block at a time.

The whole model traces as one graph with no break (``torch.compile(model, fullgraph=True)`` works), but
Inductor then compiles every block of every stage on its own.  The blocks of a stage have one
structure and one input shape, so compiling each block module instead (regional compilation) compiles
one graph per stage and reuses it for the stage's other blocks (105 s for the first SegMAN-S training
step on an H100).  The glue inside the blocks (norms, activations, RoPE,
layout changes, elementwise ops) is fused all the same; only fusion across block boundaries is lost.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .decoder import MMSCHead, VSSMBlock
from .encoder import Block

REGIONS = (Block, VSSMBlock, MMSCHead)
# torch.compile's modes, as the tools' ``--compile MODE`` offers them; "reduce-overhead" replays the
# compiled blocks from CUDA graphs (for small batches, where launching kernels bounds the step)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_regions(model: nn.Module, **options: Any) -> nn.Module:
    """Compile, in place, every encoder block, decoder SSM block and plain MMSC decoder in ``model``.

    ``options`` go to ``torch.compile`` (e.g. ``mode="reduce-overhead"`` for CUDA-graph replay);
    ``fullgraph=True`` and ``dynamic=False`` are the defaults.  Returns ``model``.  Raises ``ValueError``
    if ``model`` holds none of these blocks.
    """
    options = {"fullgraph": True, "dynamic": False, **options}
    regions: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if isinstance(module, REGIONS):
            regions.append(module)  # its own blocks are compiled with it
            return
        for child in module.children():
            visit(child)

    visit(model)
    if not regions:
        raise ValueError(f"compile_regions: {type(model).__name__} holds no SegMAN block "
                         f"({', '.join(r.__name__ for r in REGIONS)})")
    for module in regions:
        module.compile(**options)
    return model
