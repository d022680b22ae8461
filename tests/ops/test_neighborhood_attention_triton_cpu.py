"""The Triton neighborhood-attention backend without a GPU: its bias table, and its three kernels run
through Triton's interpreter (``TRITON_INTERPRET=1``, numpy on the CPU) against the torch reference.

The interpreter executes the same kernel source as the GPU (tiles, window arithmetic, bias table,
d_rpb partials), so CI catches indexing errors that only the GPU tests would otherwise see; it does
not check compilation or speed.  The interpreter must be switched on before the kernels are
decorated, hence the subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from segman.ops.triton_backend import neighborhood_attention as tb  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LN2 = 0.6931471805599453


@pytest.mark.parametrize("kernel_size", [3, 7, 11])
def test_bias_table_holds_rpb_inside_windows_and_minus_inf_outside(kernel_size):
    heads, nb = 2, 2 * kernel_size - 1
    rpb = torch.randn(heads, nb, nb)
    table = tb.bias_table(rpb, kernel_size, rpb.device)
    geo = tb.geometry(kernel_size)
    assert table.shape == (heads, kernel_size + 1, 2 * kernel_size, geo.cw)
    for slab in range(kernel_size + 1):
        for row in range(2 * kernel_size):
            for col in range(geo.cw):
                c = col - geo.co
                inside = slab < kernel_size and row < nb and slab <= c < slab + kernel_size
                got = table[:, slab, row, col]
                if inside:
                    torch.testing.assert_close(got, rpb[:, row, c] / LN2)
                else:
                    assert torch.isneginf(got).all(), (slab, row, col)
    mask_only = tb.bias_table(None, kernel_size, rpb.device)
    assert mask_only.shape[0] == 1
    assert torch.equal(torch.isneginf(mask_only[0]), torch.isneginf(table[0]))
    assert (mask_only[torch.isfinite(mask_only)] == 0).all()


SCRIPT = textwrap.dedent("""
    import torch
    from segman.ops.torch_backend.neighborhood_attention import neighborhood_attention_2d as reference
    from segman.ops.triton_backend import neighborhood_attention as tb

    torch.manual_seed(0)
    cases = [  # batch, heads, height, width, head_dim, kernel size, rpb, tile
        (2, 2, 13, 19, 20, 5, True, tb.Tile(4, 2, 1, 4)),
        (1, 1, 9, 23, 16, 7, False, tb.Tile(2, 4, 2, 2)),
        (1, 2, 18, 17, 8, 3, True, tb.Tile(4, 2, 2, 4)),
        (1, 1, 11, 11, 32, 11, True, tb.Tile(8, 1, 1, 8)),
    ]
    for batch, heads, height, width, head_dim, ks, with_rpb, tile in cases:
        tb.force_tiles(tile, tile, tile)
        q, k, v = (torch.randn(batch, heads, height, width, head_dim, requires_grad=True) for _ in range(3))
        rpb = torch.randn(heads, 2 * ks - 1, 2 * ks - 1, requires_grad=True) if with_rpb else None
        leaves = [q, k, v] + ([rpb] if with_rpb else [])
        scale = head_dim ** -0.5
        out = tb.neighborhood_attention_2d(q, k, v, ks, 1, rpb, scale)
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, dout)
        ref = reference(q, k, v, ks, 1, rpb, scale)
        ref_grads = torch.autograd.grad(ref, leaves, dout)
        for name, a, b in zip(["out", "dq", "dk", "dv", "drpb"], (out,) + grads, (ref,) + ref_grads):
            err = float((a - b).norm() / b.norm())
            case = (batch, heads, height, width, head_dim, ks)
            assert err < 1e-5, f"{name}: relative error {err:.1e} for case {case}"
    print("ok", len(cases))
""")


def test_triton_kernels_in_the_interpreter_match_the_reference():
    env = {**os.environ, "TRITON_INTERPRET": "1", "SEGMAN_NA_TRITON_AUTOTUNE": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok 4")
