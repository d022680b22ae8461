"""The Triton backends without a GPU: every Triton kernel (neighborhood attention, selective scan,
fused SS2D scan, cross-scan / cross-merge) runs through Triton's interpreter (``TRITON_INTERPRET=1``,
numpy on the CPU) against the torch reference, values and gradients; plus the NA bias table and the
NA autotuner's plumbing (with a stand-in timer: the GPU timing itself needs CUDA graphs).

The interpreter executes the same kernel source as the GPU (tiles, window and scan-order
arithmetic, masks, partial sums), so CI catches indexing errors that only the GPU tests would
otherwise see; it does not check compilation, precision of the GPU's tensor cores, or speed.  It
must be switched on before the kernels are decorated, hence one subprocess per script.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from segman.ops.triton_backend import neighborhood_attention as tb  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_key_runs_cover_the_windows_and_fp32_launches_avoid_the_faulting_shapes():
    """A tile's key run is a power of two that holds the union of its queries' windows: ``TW + K - 1``
    columns, or the whole map when it is narrower (the run is then capped at ``pow2(W)``).  fp32
    launches on 8+ warps keep runs of at least 32, and no fp32 candidate uses 16 warps: both faulted
    with an illegal address on an H100 (``tile_run``)."""
    for tw in (8, 16):
        for kernel_size in (3, 5, 7, 9, 11, 13):
            for width in range(kernel_size, 70):
                run = tb.key_run(tw, kernel_size, width)
                assert run & (run - 1) == 0 and run >= min(tw + kernel_size - 1, width)
    assert tb.key_run(16, 7, 16) == 16 and tb.key_run(16, 7, 32) == 32 and tb.key_run(16, 7) == 32
    eight_warps = tb.Tile(4, 2, 1, 8)
    assert tb.tile_run(eight_warps, 5, 11, torch.float32) == 32
    assert tb.tile_run(eight_warps, 5, 11, torch.bfloat16) == 16
    assert tb.tile_run(tb.Tile(4, 2, 1, 4), 5, 11, torch.float32) == 16
    for kind in ("fwd", "dq", "dkdv"):
        for head_dim in (20, 32, 36, 64, 128):
            for dtype in (torch.float32, torch.bfloat16):
                for tile in tb.candidates(kind, 7, head_dim, dtype):
                    assert tile.rows in (1, 2, 4) and tile.th * tile.tw >= 16
                    assert dtype != torch.float32 or tile.num_warps <= 8, (kind, head_dim, tile)


def test_backward_mode_is_forced_timed_or_deterministic(monkeypatch):
    """The fused backward only where allowed: SEGMAN_NA_BACKWARD forces a path (a typo is an error that
    names the choices); without it the faster path is timed once per shape; torch's deterministic
    algorithms, cuDNN's deterministic flag and autotuning off all give the split (deterministic) path."""
    monkeypatch.setattr(tb, "_MODES", {})
    timed = []
    monkeypatch.setattr(tb, "_gpu_ms", lambda fn: fn())
    run = lambda mode: timed.append(mode) or {"split": 2.0, "fused": 1.0}[mode]  # noqa: E731
    args = (7, 32, torch.bfloat16, 16, True, run)
    monkeypatch.setenv("SEGMAN_NA_TRITON_AUTOTUNE", "1")
    assert tb.backward_mode(*args) == "fused" and sorted(timed) == ["fused", "split"]
    assert tb.backward_mode(*args) == "fused" and len(timed) == 2  # cached per shape
    monkeypatch.setenv("SEGMAN_NA_BACKWARD", "split")
    assert tb.backward_mode(*args) == "split"
    monkeypatch.setenv("SEGMAN_NA_BACKWARD", "fast")
    with pytest.raises(ValueError, match="'fused', 'split'"):
        tb.backward_mode(*args)
    monkeypatch.setenv("SEGMAN_NA_BACKWARD", "fused")
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert tb.backward_mode(*args) == "split"
    monkeypatch.undo()
    monkeypatch.setenv("SEGMAN_NA_BACKWARD", "fused")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # tools/train.py --deterministic
    assert tb.backward_mode(*args) == "split"
    monkeypatch.undo()
    monkeypatch.setenv("SEGMAN_NA_TRITON_AUTOTUNE", "0")
    monkeypatch.delenv("SEGMAN_NA_BACKWARD", raising=False)
    assert tb.backward_mode(*args) == "split"


def test_fused_backward_runs_hold_each_tiles_query_band():
    """The fused backward needs one query chunk per key tile row (its d_rpb partials are per query
    row): its runs hold every query column whose window meets the tile, on any map."""
    def query_lo(y, k):
        return 0 if y <= k - 1 else y - k // 2

    def query_hi(y, length, k):
        return length - 1 if y >= length - k else y + k // 2

    for tile in (tb.Tile(4, 2, 1, 4), tb.Tile(8, 1, 1, 4, tw=8), tb.Tile(4, 2, 1, 8)):
        for kernel_size in (3, 5, 7, 9, 11, 13):
            for width in range(kernel_size, 80):
                for dtype in (torch.float32, torch.bfloat16):
                    run = tb.tile_run(tile, kernel_size, width, dtype, whole_band=True)
                    for j0 in range(0, width, tile.tw):
                        band = query_hi(min(j0 + tile.tw, width) - 1, width, kernel_size) - query_lo(j0, kernel_size)
                        assert band + 1 <= run, (tile, kernel_size, width, j0)


TABLE_SCRIPT = """
import torch
from segman.ops.triton_backend import neighborhood_attention as tb

LN2 = 0.6931471805599453
torch.manual_seed(0)
for kernel_size in (3, 7, 11):  # the table holds rpb / ln 2 inside windows and -inf outside
    heads, nb = 2, 2 * kernel_size - 1
    rpb = torch.randn(heads, nb, nb)
    shifted = tb.bias_table(rpb, kernel_size, rpb.device)
    table = tb.table_slabs(shifted, kernel_size)
    geo = tb.geometry(kernel_size)
    assert table.shape == (heads, kernel_size + 1, 2 * kernel_size, geo.cw) and geo.cw % 4 == 0
    flat = table.flatten(1)
    for p in range(4):  # copy p: the table shifted by p floats, -inf around it
        assert torch.equal(shifted[:, p, p:p + flat.shape[1]], flat)
        assert torch.isneginf(shifted[:, p, :p]).all() and torch.isneginf(shifted[:, p, p + flat.shape[1]:]).all()
    c = torch.arange(geo.cw) - geo.co
    for slab in range(kernel_size + 1):
        for row in range(2 * kernel_size):
            inside = (slab < kernel_size) & (row < nb) & (c >= slab) & (c < slab + kernel_size)
            got = table[:, slab, row]
            assert torch.isneginf(got[:, ~inside]).all(), (kernel_size, slab, row)
            if inside.any():
                torch.testing.assert_close(got[:, inside], rpb[:, row, c[inside]] / LN2)
    mask_only = tb.table_slabs(tb.bias_table(None, kernel_size, rpb.device), kernel_size)
    assert mask_only.shape[0] == 1
    assert torch.equal(torch.isneginf(mask_only[0]), torch.isneginf(table[0]))
    assert (mask_only[torch.isfinite(mask_only)] == 0).all()

# The rpb-free table is cached: one built inside torch.inference_mode must still be a normal tensor, or
# save_for_backward of a later training call would raise.
tb._mask_table.cache_clear()
with torch.inference_mode():
    table = tb.bias_table(None, 5, torch.device("cpu"))
assert not table.is_inference()
assert tb.bias_table(None, 5, torch.device("cpu")) is table
print("ok", 4)
"""


NA_SCRIPT = """
import os
import torch
from segman.ops.library import neighborhood_attention_2d_op
from segman.ops.triton_backend import neighborhood_attention as tb

def reference(*args):
    return neighborhood_attention_2d_op(*args, "torch")[0]

def triton_na(*args):
    return neighborhood_attention_2d_op(*args, "triton")[0]

_empty = torch.empty
def _nan_empty(*args, **kwargs):  # every buffer the kernels should fill starts as NaN
    t = _empty(*args, **kwargs)
    return t.fill_(float("nan")) if t.is_floating_point() else t
torch.empty = _nan_empty

torch.manual_seed(0)
cases = [  # batch, heads, height, width, head_dim, kernel size, rpb, tile
    (2, 2, 13, 19, 20, 5, True, tb.Tile(4, 2, 1, 4)),
    (1, 1, 9, 23, 16, 7, False, tb.Tile(2, 4, 2, 2)),
    (1, 2, 18, 17, 8, 3, True, tb.Tile(4, 2, 2, 4)),
    (1, 1, 11, 11, 32, 11, True, tb.Tile(8, 1, 1, 8)),
    (2, 2, 12, 21, 20, 9, True, tb.Tile(8, 1, 1, 4, tw=8)),
    (1, 1, 10, 9, 16, 5, True, tb.Tile(4, 2, 2, 2, tw=8)),
    (2, 1, 9, 11, 36, 5, True, tb.Tile(4, 2, 2, 4, tw=8)),    # head_dim in two parts, 32 + 16 (4 used)
    (1, 2, 7, 10, 48, 3, False, tb.Tile(2, 4, 1, 4)),          # two full parts, 32 + 16
    (1, 2, 16, 16, 32, 7, True, tb.Tile(4, 2, 4, 4)),          # 4 key rows per dot; key runs of 16 (the width)
    (2, 1, 11, 12, 36, 5, True, tb.Tile(2, 4, 2, 2)),          # runs of 16 on a 12-wide map, head dim 32 + 16
    (2, 1, 9, 11, 36, 5, True, tb.Tile(4, 2, 2, 2, tw=8, prefetch=True)),  # dk/dv loads a step ahead
    (1, 2, 13, 19, 20, 5, True, tb.Tile(4, 2, 2, 4, 3, bias_in_dot=True)),  # the bias as the QK accumulator
]
runs = [(case, mode) for case in cases for mode in ("split", "fused")]  # both backward paths
for (batch, heads, height, width, head_dim, ks, with_rpb, tile), mode in runs:
    os.environ["SEGMAN_NA_BACKWARD"] = mode
    tb.force_tiles(tile, tile, tile, tile)
    q, k, v = (torch.randn(batch, heads, height, width, head_dim, requires_grad=True) for _ in range(3))
    rpb = torch.randn(heads, 2 * ks - 1, 2 * ks - 1, requires_grad=True) if with_rpb else None
    leaves = [q, k, v] + ([rpb] if with_rpb else [])
    scale = head_dim ** -0.5
    out = triton_na(q, k, v, ks, 1, rpb, scale)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    ref = reference(q, k, v, ks, 1, rpb, scale)
    ref_grads = torch.autograd.grad(ref, leaves, dout)
    for name, a, b in zip(["out", "dq", "dk", "dv", "drpb"], (out,) + grads, (ref,) + ref_grads):
        err = float((a - b).norm() / b.norm())
        case = (batch, heads, height, width, head_dim, ks, mode)
        assert err < 1e-5, f"{name}: relative error {err:.1e} for case {case}"
print("ok", len(runs))
"""


DRPB_SUM_SCRIPT = """
import torch
from segman.ops.triton_backend import neighborhood_attention as tb

# d_rpb from its partials, summed in one program per d_rpb row, or in splits of the partials (what a
# GPU with many SMs gets when heads x d_rpb rows are few) added by a second kernel: the same sums
torch.manual_seed(0)
kernel_size, nb = 3, 5
for by_key_row in (False, True):
    rows = nb if by_key_row else kernel_size
    parts = torch.randn(1, 31, 100, 2, rows, 16)                  # 3100 partials: 13 splits, the last short
    one = tb._sum_partials(parts, torch.float32, kernel_size, by_key_row)
    tb._sm_count = lambda device: 64
    split = tb._sum_partials(parts, torch.float32, kernel_size, by_key_row)
    split_bf16 = tb._sum_partials(parts, torch.bfloat16, kernel_size, by_key_row)
    tb._sm_count = lambda device: 1
    assert one.shape == (2, nb, nb) and torch.isfinite(one).all()
    torch.testing.assert_close(split, one, rtol=1e-5, atol=1e-4)
    assert split_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(split_bf16, one.bfloat16())
print("ok", 2)
"""


AUTOTUNE_SCRIPT = """
import torch
from segman.ops.library import neighborhood_attention_2d_op
from segman.ops.triton_backend import neighborhood_attention as tb

def reference(*args):
    return neighborhood_attention_2d_op(*args, "torch")[0]

def triton_na(*args):
    return neighborhood_attention_2d_op(*args, "triton")[0]

timed = []
def fake_gpu_ms(fn):  # runs fn like the real timer; the later a call is timed, the faster it seems
    fn()
    fn()
    timed.append(fn)
    return -len(timed)
tb._gpu_ms = fake_gpu_ms
tb.candidates = lambda kind, *args: [tb.Tile(4, 2, 1, 4), tb.Tile(2, 4, 2, 2)]
torch.manual_seed(0)
q, k, v = (torch.randn(1, 2, 11, 13, 20, requires_grad=True) for _ in range(3))
rpb = torch.randn(2, 9, 9, requires_grad=True)
out = triton_na(q, k, v, 5, 1, rpb, 0.3)
dout = torch.randn_like(out)
grads = torch.autograd.grad(out, [q, k, v, rpb], dout)
# Both backward paths and every kernel's candidates were timed; the fused path, timed last, won, and
# its dq holds this call's sum alone (the timing launches added into scratch).
assert list(tb._MODES.values()) == ["fused"], tb._MODES
assert {key[0] for key in tb._TUNED} == {"fwd", "dq", "dkdv", "bwd"}, tb._TUNED
ref = reference(q, k, v, 5, 1, rpb, 0.3)
ref_grads = torch.autograd.grad(ref, [q, k, v, rpb], dout)
for name, a, b in zip(["out", "dq", "dk", "dv", "drpb"], (out,) + grads, (ref,) + ref_grads):
    err = float((a - b).norm() / b.norm())
    assert err < 1e-5, f"{name}: relative error {err:.1e}"
# A later process reads the picks from the tuning file instead of timing again.
tuned, modes = dict(tb._TUNED), dict(tb._MODES)
tb._TUNED.clear(), tb._MODES.clear()
tb._STORED = None
def not_again(fn):
    raise AssertionError("timed again despite the tuning file")
tb._gpu_ms = not_again
out = triton_na(q, k, v, 5, 1, rpb, 0.3)
torch.autograd.grad(out, [q, k, v, rpb], dout)
assert tb._MODES == modes and {key[0] for key in tb._TUNED} == {"fwd", "bwd"}, (tb._MODES, tb._TUNED)
assert all(tuned[key] == tile for key, tile in tb._TUNED.items()), (tb._TUNED, tuned)
print("ok", 2)
"""


SCAN_SCRIPT = """
import torch
from segman.ops import selective_scan
from segman.ops.library import selective_scan_op

torch.manual_seed(0)
cases = [  # batch, groups, channels per group, length, D and delta_bias, softplus
    (2, 4, 3, 37, True, True),
    (1, 2, 5, 2500, False, False),  # three 1024-step chunks, the last one partial
    (2, 4, 2, 1, True, True),
]
for batch, groups, dg, length, optional, softplus in cases:
    channels = groups * dg
    u = torch.randn(batch, channels, length, requires_grad=True)
    raw = torch.randn(batch, channels, length) * 0.5
    delta = (raw - 0.5 if softplus else raw.abs() + 0.05).requires_grad_()  # steps > 0 without softplus
    A = (-(torch.rand(channels, 1) + 0.1)).requires_grad_()
    B, C = (torch.randn(batch, groups, 1, length, requires_grad=True) for _ in range(2))
    D = torch.randn(channels, requires_grad=True) if optional else None
    bias = torch.randn(channels, requires_grad=True) if optional else None
    leaves = [t for t in (u, delta, A, B, C, D, bias) if t is not None]
    out = selective_scan_op(u, delta, A, B, C, D, bias, softplus, "triton")[0]
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    ref = selective_scan(u, delta, A, B, C, D, bias, softplus, backend="torch")
    ref_grads = torch.autograd.grad(ref, leaves, dout)
    for i, (a, b) in enumerate(zip((out,) + grads, (ref,) + ref_grads)):
        err = float((a - b).norm() / b.norm()) if b.norm() > 0 else float(a.abs().max())
        assert err < 1e-5, f"tensor {i}: relative error {err:.1e} for case {(batch, groups, dg, length)}"
print("ok", len(cases))
"""

SS2D_SCRIPT = """
import torch
from segman.ops import cross_merge, cross_scan, ss2d_scan
from segman.ops.library import cross_merge_op, cross_scan_op, ss2d_scan_op

torch.manual_seed(0)
x = torch.randn(2, 5, 7, 9, requires_grad=True)
out = cross_scan_op(x, "triton")
dout = torch.randn_like(out)
ref = cross_scan(x, backend="torch")
assert torch.equal(out, ref), "cross_scan"
assert torch.equal(torch.autograd.grad(out, x, dout)[0], torch.autograd.grad(ref, x, dout)[0]), "cross_scan grad"
y = torch.randn(2, 4, 5, 7, 9, requires_grad=True)
out = cross_merge_op(y, "triton")
dout = torch.randn_like(out)
ref = cross_merge(y, backend="torch")
torch.testing.assert_close(out, ref)
torch.testing.assert_close(torch.autograd.grad(out, y, dout)[0], torch.autograd.grad(ref, y, dout)[0])

batch, channels, height, width = 2, 3, 5, 6
length = height * width
x = torch.randn(batch, channels, height, width, requires_grad=True)
delta = (torch.randn(batch, 4 * channels, length) * 0.5 - 0.5).requires_grad_()
A = (-(torch.rand(4 * channels, 1) + 0.1)).requires_grad_()
B, C = (torch.randn(batch, 4, 1, length, requires_grad=True) for _ in range(2))
D, bias = (torch.randn(4 * channels, requires_grad=True) for _ in range(2))
leaves = [x, delta, A, B, C, D, bias]
out = ss2d_scan_op(x, delta, A, B, C, D, bias, True, "triton")[0]
dout = torch.randn_like(out)
grads = torch.autograd.grad(out, leaves, dout)
ref = ss2d_scan(x, delta, A, B, C, D, bias, True, backend="torch")
ref_grads = torch.autograd.grad(ref, leaves, dout)
for i, (a, b) in enumerate(zip((out,) + grads, (ref,) + ref_grads)):
    err = float((a - b).norm() / b.norm())
    assert err < 1e-5, f"ss2d tensor {i}: relative error {err:.1e}"
print("ok", 3)
"""


@pytest.mark.parametrize("script,cases,autotune", [(TABLE_SCRIPT, 4, "0"), (NA_SCRIPT, 24, "0"),
                                                   (DRPB_SUM_SCRIPT, 2, "0"), (AUTOTUNE_SCRIPT, 2, "1"),
                                                   (SCAN_SCRIPT, 3, "0"), (SS2D_SCRIPT, 3, "0")],
                         ids=["na_bias_table", "neighborhood_attention", "na_drpb_sum", "na_autotuning",
                              "selective_scan", "cross_scan_merge_ss2d"])
def test_triton_kernels_in_the_interpreter_match_the_reference(script, cases, autotune, tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "SEGMAN_NA_TRITON_AUTOTUNE": autotune, "SEGMAN_NA_BACKWARD": "",
           "SEGMAN_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().endswith(f"ok {cases}")
