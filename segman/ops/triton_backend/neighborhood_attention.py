"""Fused 2-D neighborhood attention with relative position bias (RPB) in Triton: forward and backward.

What it computes (SPEC §1.8.2, dilation 1; ``segman/ops/torch_backend/neighborhood_attention.py``
is the reference).  Per query pixel ``(i, j)`` with window origin ``s = clamp(i - K//2, 0, H - K)``
(same rule for ``j``), the naive PyTorch version and what it moves through memory::

    keys    = k[s_i:s_i+K, s_j:s_j+K]                    # gathers K² keys per query: K²·d reads
    logits  = scale * q[i, j] · keys + rpb[h, key - (i, j) + K - 1]   # a (B, n, H, W, K²) tensor
    p       = softmax(logits)                              # written and read again (K² floats)
    out     = p @ v[window]                                # another K²·d gather

Here the (…, K²) tensors never reach global memory.  A program owns a strip of ``TW = 16`` query
pixels of one row (then the next ``TR - 1`` rows, so that the key rows it reloads hit L1).  All
queries of a strip share their window rows, so the program walks the ``K`` key rows of the window;
each is one contiguous run of ``RWP = pow2(TW + K - 1)`` pixels holding every strip query's window
columns.  It scores the strip against the run with ``tl.dot`` (head_dim padded to a power of two by
masks), masks keys outside each query's window, adds the bias -- one row of ``rpb[head]`` per key
row, so the gather stays within a few cache lines -- and folds the row into an online softmax.
Scored keys per query: ``K·RWP`` (352 for K 11) against ``K² = 121`` needed.  The forward saves the
log-sum-exp per query (``B·n·H·W`` floats) for the backward.

Backward, FlashAttention-2 style, in two kernels:

* ``dq`` kernel (per query strip, same walk): recomputes ``p = exp(logit - lse)``,
  ``ds = p (dO·v - Δ)`` with ``Δ = rowsum(dO ∘ O)`` (computed here and saved for the next kernel),
  accumulates ``dq``, and reduces ``ds`` to the bias row of each key row *inside the program*: a
  ``tl.gather`` re-indexes ``ds`` from key columns to bias columns and the strip's queries are
  summed.  Each program writes its ``K × (2K-1)`` partial per query row once (plain stores; the
  buffer is ~11 MB at SegMAN-S stage 1); a torch ``sum``/``index_add`` finishes ``d_rpb``.  No atomics.
* ``dk/dv`` kernel (per key strip): walks the rows of queries whose windows contain the key row
  (``K`` rows inside the map, more at the borders where windows are shifted inwards), recomputes
  ``p`` and ``ds`` transposed, and accumulates ``dk`` and ``dv`` in registers.

Precision: products accumulate in fp32; fp16/bf16 probabilities are rounded to v's dtype before
``p @ v`` (as NATTEN does).  fp32 inputs use ``tf32x3`` dot products (about fp32 accuracy) unless
``torch.backends.cuda.matmul`` allows TF32, in which case plain ``tf32`` is used.

Tiles are picked per (head_dim, kernel size, dtype) by a narrow autotuner over a few candidates
(``SEGMAN_NA_TRITON_AUTOTUNE=0`` uses the first candidate, the measured default).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # the same, readable inside kernels


# --------------------------------------------------------------------------------------------------
# Window arithmetic (one axis).  NATTEN's rule: the window of query ``x`` starts at
# ``clamp(x - K//2, 0, L - K)``; a key ``y`` is seen by the queries ``query_lo(y) ..= query_hi(y)``.
# --------------------------------------------------------------------------------------------------

@triton.jit
def _window_start(x, length, KS: tl.constexpr):
    return tl.minimum(tl.maximum(x - KS // 2, 0), length - KS)


@triton.jit
def _query_lo(y, KS: tl.constexpr):
    return tl.where(y <= KS - 1, 0, y - KS // 2)


@triton.jit
def _query_hi(y, length, KS: tl.constexpr):
    return tl.where(y >= length - KS, length - 1, y + KS // 2)


@triton.jit
def _load_rows(base, offsets, d_ok, EVEN_D: tl.constexpr):
    """``base[offsets]`` for in-bounds pixels; head_dim padding reads zeros."""
    if EVEN_D:
        return tl.load(base + offsets)
    return tl.load(base + offsets, mask=d_ok[None, :], other=0.0)


@triton.jit
def _strip_origin(TR: tl.constexpr, TW: tl.constexpr, W):
    """First row and first column of this program's ``TR`` rows × ``TW`` columns of pixels."""
    pid_t = tl.program_id(0)
    strips_w = tl.cdiv(W, TW)
    return (pid_t // strips_w) * TR, (pid_t % strips_w) * TW


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------

@triton.jit
def _na2d_fwd_kernel(
    Q, K, V, RPB, O, LSE,
    sqb, sqn, sqh, sqw, skb, skn, skh, skw, svb, svn, svh, svw, sob, son, soh, sow,
    heads, H, W, D, qk_scale,
    KS: tl.constexpr, HAS_RPB: tl.constexpr, TR: tl.constexpr, TW: tl.constexpr,
    RWP: tl.constexpr, DP: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
):
    tl.static_assert(RWP >= TW + KS - 1)
    NB: tl.constexpr = 2 * KS - 1                                   # bias bins per axis
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    n = pid_bh % heads
    i_first, j0 = _strip_origin(TR, TW, W)

    # Columns: the same for every query row of the strip.
    qj = j0 + tl.arange(0, TW)
    qj_ok = qj < W
    sj = _window_start(qj, W, KS)
    col0 = _window_start(j0, W, KS)
    col1 = _window_start(tl.minimum(j0 + TW, W) - 1, W, KS) + KS
    kc = col0 + tl.arange(0, RWP)                                   # key columns of every key row
    inside = (kc[None, :] >= sj[:, None]) & (kc[None, :] < sj[:, None] + KS) & qj_ok[:, None]
    bias_col = kc[None, :] - qj[:, None] + (KS - 1)
    kc = tl.minimum(kc, col1 - 1)                                   # past the union: loaded, masked out
    d = tl.arange(0, DP)
    d_ok = d < D
    q_mask = qj_ok[:, None] & d_ok[None, :]
    k_row = K + b * skb + n * skn                                   # scalar bases, int32 offsets: few
    v_row = V + b * svb + n * svn                                   # registers per thread
    k_off = kc[:, None] * skw + d[None, :]
    v_off = kc[:, None] * svw + d[None, :]
    rpb_base = RPB + n * NB * NB

    for qi in range(i_first, tl.minimum(i_first + TR, H)):
        si = _window_start(qi, H, KS)
        q = tl.load(Q + b * sqb + n * sqn + qi * sqh + qj[:, None] * sqw + d[None, :], mask=q_mask, other=0.0)
        m_i = tl.full([TW], -1.0e30, tl.float32)
        l_i = tl.zeros([TW], tl.float32)
        acc = tl.zeros([TW, DP], tl.float32)
        for a in range(0, KS):                                      # the K key rows of the window
            kr = si + a
            k = _load_rows(k_row + kr * skh, k_off, d_ok, EVEN_D)
            v = _load_rows(v_row + kr * svh, v_off, d_ok, EVEN_D)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            if HAS_RPB:  # one row of rpb[head]: contiguous per query
                bias = tl.load(rpb_base + (kr - qi + (KS - 1)) * NB + bias_col, mask=inside, other=0.0)
                s += bias.to(tl.float32) * _LOG2E
            s = tl.where(inside, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        l_i = tl.where(l_i > 0.0, l_i, 1.0)
        tl.store(O + b * sob + n * son + qi * soh + qj[:, None] * sow + d[None, :],
                 (acc / l_i[:, None]).to(O.dtype.element_ty), mask=q_mask)
        tl.store(LSE + (pid_bh.to(tl.int64) * H + qi) * W + qj, m_i + tl.log2(l_i), mask=qj_ok)


# --------------------------------------------------------------------------------------------------
# Backward, kernel 1: dq, Δ and the per-program d_rpb partials (per query strip)
# --------------------------------------------------------------------------------------------------

@triton.jit
def _na2d_bwd_dq_kernel(
    Q, K, V, RPB, O, DO, LSE, DELTA, DQ, DRPB,
    sqb, sqn, sqh, sqw, skb, skn, skh, skw, svb, svn, svh, svw,
    sob, son, soh, sow, sdb, sdn, sdh, sdw, sgb, sgn, sgh, sgw,
    heads, H, W, D, qk_scale, scale,
    KS: tl.constexpr, HAS_RPB: tl.constexpr, RPB_GRAD: tl.constexpr, TR: tl.constexpr,
    TW: tl.constexpr, RWP: tl.constexpr, DP: tl.constexpr, BP: tl.constexpr, EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tl.static_assert(RWP >= TW + KS - 1)
    tl.static_assert(BP >= 2 * KS - 1)
    NB: tl.constexpr = 2 * KS - 1
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    n = pid_bh % heads
    i_first, j0 = _strip_origin(TR, TW, W)

    qj = j0 + tl.arange(0, TW)
    qj_ok = qj < W
    sj = _window_start(qj, W, KS)
    col0 = _window_start(j0, W, KS)
    col1 = _window_start(tl.minimum(j0 + TW, W) - 1, W, KS) + KS
    kc = col0 + tl.arange(0, RWP)
    inside = (kc[None, :] >= sj[:, None]) & (kc[None, :] < sj[:, None] + KS) & qj_ok[:, None]
    bias_col = kc[None, :] - qj[:, None] + (KS - 1)
    kc = tl.minimum(kc, col1 - 1)
    d = tl.arange(0, DP)
    d_ok = d < D
    q_mask = qj_ok[:, None] & d_ok[None, :]
    k_row = K + b * skb + n * skn
    v_row = V + b * svb + n * svn
    k_off = kc[:, None] * skw + d[None, :]
    v_off = kc[:, None] * svw + d[None, :]
    rpb_base = RPB + n * NB * NB

    # d_rpb: bias column c of query j sits at key column c + qj - (K-1), i.e. chunk column g_idx.
    c = tl.arange(0, BP)
    g_idx = c[None, :] + (qj - (KS - 1) - col0)[:, None]
    g_ok = (g_idx >= 0) & (g_idx < RWP) & (c < NB)[None, :] & qj_ok[:, None]
    g_idx = tl.minimum(tl.maximum(g_idx, 0), RWP - 1)
    strip = tl.program_id(0) % tl.cdiv(W, TW)
    strips_w = tl.cdiv(W, TW)

    for qi in range(i_first, tl.minimum(i_first + TR, H)):
        si = _window_start(qi, H, KS)
        row = qi * sqh + qj[:, None] * sqw + d[None, :]
        q = tl.load(Q + b * sqb + n * sqn + row, mask=q_mask, other=0.0)
        o = tl.load(O + b * sob + n * son + qi * soh + qj[:, None] * sow + d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + b * sdb + n * sdn + qi * sdh + qj[:, None] * sdw + d[None, :], mask=q_mask, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        stat = (pid_bh.to(tl.int64) * H + qi) * W + qj
        tl.store(DELTA + stat, delta, mask=qj_ok)
        lse = tl.load(LSE + stat, mask=qj_ok, other=0.0)
        part = (((pid_bh.to(tl.int64) * H + qi) * strips_w + strip) * KS) * BP
        dq = tl.zeros([TW, DP], tl.float32)
        for a in range(0, KS):
            kr = si + a
            k = _load_rows(k_row + kr * skh, k_off, d_ok, EVEN_D)
            v = _load_rows(v_row + kr * svh, v_off, d_ok, EVEN_D)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            if HAS_RPB:
                bias = tl.load(rpb_base + (kr - qi + (KS - 1)) * NB + bias_col, mask=inside, other=0.0)
                s += bias.to(tl.float32) * _LOG2E
            p = tl.where(inside, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            if RPB_GRAD:  # row (kr - qi + K - 1) of d_rpb: sum of ds along each key-minus-query diagonal
                y = tl.sum(tl.where(g_ok, tl.gather(ds, g_idx, axis=1), 0.0), axis=0)
                tl.store(DRPB + part + a * BP + c, y)
        tl.store(DQ + b * sgb + n * sgn + qi * sgh + qj[:, None] * sgw + d[None, :],
                 (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


# --------------------------------------------------------------------------------------------------
# Backward, kernel 2: dk and dv (per key strip)
# --------------------------------------------------------------------------------------------------

@triton.jit
def _na2d_bwd_dkdv_kernel(
    Q, K, V, RPB, DO, LSE, DELTA, DK, DV,
    sqb, sqn, sqh, sqw, skb, skn, skh, skw, svb, svn, svh, svw, sdb, sdn, sdh, sdw,
    heads, H, W, D, qk_scale, scale,
    KS: tl.constexpr, HAS_RPB: tl.constexpr, TR: tl.constexpr, TW: tl.constexpr,
    QWP: tl.constexpr, DP: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
):
    NB: tl.constexpr = 2 * KS - 1
    pid_bh = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    n = pid_bh % heads
    r_first, j0 = _strip_origin(TR, TW, W)

    kc = j0 + tl.arange(0, TW)
    kc_ok = kc < W
    kc_in = tl.minimum(kc, W - 1)
    d = tl.arange(0, DP)
    d_ok = d < D
    k_mask = kc_ok[:, None] & d_ok[None, :]
    q_row = Q + b * sqb + n * sqn
    do_row = DO + b * sdb + n * sdn
    # Query columns whose windows contain a key column of the strip: lo_c ..= hi_c.
    lo_c = _query_lo(j0, KS)
    hi_c = _query_hi(tl.minimum(j0 + TW, W) - 1, W, KS)
    n_cc = tl.cdiv(hi_c - lo_c + 1, QWP)
    w = tl.arange(0, QWP)
    rpb_base = RPB + n * NB * NB
    stat_base = pid_bh.to(tl.int64) * H * W

    for kr in range(r_first, tl.minimum(r_first + TR, H)):
        k = _load_rows(K + b * skb + n * skn + kr * skh, kc_in[:, None] * skw + d[None, :], d_ok, EVEN_D)
        v = _load_rows(V + b * svb + n * svn + kr * svh, kc_in[:, None] * svw + d[None, :], d_ok, EVEN_D)
        lo_r = _query_lo(kr, KS)                                    # query rows whose windows hold kr
        hi_r = _query_hi(kr, H, KS)
        dk = tl.zeros([TW, DP], tl.float32)
        dv = tl.zeros([TW, DP], tl.float32)
        for it in range(0, (hi_r - lo_r + 1) * n_cc):
            qi = lo_r + it // n_cc
            qc = lo_c + (it % n_cc) * QWP + w
            qc_ok = qc <= hi_c
            qc_in = tl.minimum(qc, hi_c)                            # past the band: loaded, masked out
            q = _load_rows(q_row + qi * sqh, qc_in[:, None] * sqw + d[None, :], d_ok, EVEN_D)
            do = _load_rows(do_row + qi * sdh, qc_in[:, None] * sdw + d[None, :], d_ok, EVEN_D)
            lse = tl.load(LSE + stat_base + qi * W + qc_in)
            delta = tl.load(DELTA + stat_base + qi * W + qc_in)
            sj = _window_start(qc, W, KS)
            inside = (kc[:, None] >= sj[None, :]) & (kc[:, None] < sj[None, :] + KS) & qc_ok[None, :]
            s = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale              # [keys, queries]
            if HAS_RPB:
                bias = tl.load(rpb_base + (kr - qi + (KS - 1)) * NB + (kc[:, None] - qc[None, :] + (KS - 1)),
                               mask=inside, other=0.0)
                s += bias.to(tl.float32) * _LOG2E
            p = tl.where(inside, tl.exp2(s - lse[None, :]), 0.0)
            dv += tl.dot(p.to(do.dtype), do, input_precision=PRECISION)
            dp = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds = p * (dp - delta[None, :])
            dk += tl.dot(ds.to(q.dtype), q, input_precision=PRECISION)
        out = ((pid_bh.to(tl.int64) * H + kr) * W + kc[:, None]) * D + d[None, :]     # dk, dv: contiguous
        tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=k_mask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=k_mask)


# --------------------------------------------------------------------------------------------------
# Launch configuration: tiles per (kernel size, head_dim, dtype), narrow autotuning
# --------------------------------------------------------------------------------------------------

class Tile(NamedTuple):
    """A program's work: ``th`` rows of a ``tw``-pixel-wide strip, ``num_warps``, ``num_stages``."""

    th: int
    tw: int = 16
    num_warps: int = 1
    num_stages: int = 2


def _pow2(x: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(x))


def candidates(kind: str, kernel_size: int, head_dim: int, dtype: torch.dtype) -> list[Tile]:
    """Tiles tried by the autotuner for one kernel ("fwd", "dq" or "dkdv"), default first.

    The strip is 16 pixels wide (the smallest ``tl.dot`` operand); its key row is
    ``pow2(16 + K - 1)`` = 32 keys for K <= 17.  Wider heads get more warps."""
    dp = _pow2(head_dim)
    warps = 1 if dp <= 32 else 2 if dp <= 64 else 4
    if dtype == torch.float32 and dp >= 64:
        warps *= 2
    return [Tile(8, 16, warps), Tile(8, 16, warps, 1), Tile(16, 16, warps), Tile(8, 16, 2 * warps)]


_TUNED: dict = {}
_FORCED: dict = {}


def autotune_enabled() -> bool:
    return os.environ.get("SEGMAN_NA_TRITON_AUTOTUNE", "1") not in ("0", "", "false", "False")


def force_tiles(fwd: Optional[Tile] = None, dq: Optional[Tile] = None, dkdv: Optional[Tile] = None) -> None:
    """Pin the tiles of each kernel (tests and benchmarks); ``None`` returns it to autotuning."""
    for kind, tile in (("fwd", fwd), ("dq", dq), ("dkdv", dkdv)):
        if tile is None:
            _FORCED.pop(kind, None)
        else:
            _FORCED[kind] = Tile(*tile)


def _pick(kind: str, kernel_size: int, head_dim: int, dtype: torch.dtype, launch) -> Tile:
    """The tile for ``kind``: forced, cached, the default, or the fastest candidate of ``launch``."""
    if kind in _FORCED:
        return _FORCED[kind]
    key = (kind, kernel_size, head_dim, dtype)
    if key in _TUNED:
        return _TUNED[key]
    tiles = candidates(kind, kernel_size, head_dim, dtype)
    if not autotune_enabled() or len(tiles) == 1:
        _TUNED[key] = tiles[0]
        return tiles[0]
    times = []
    for tile in tiles:
        try:
            times.append(triton.testing.do_bench(lambda: launch(tile), warmup=5, rep=20, return_mode="median"))
        except Exception:  # a candidate that does not compile or fit (shared memory) is skipped
            times.append(float("inf"))
    best = tiles[min(range(len(tiles)), key=times.__getitem__)]
    _TUNED[key] = best
    return best


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # ignored for 16-bit operands
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def _strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# --------------------------------------------------------------------------------------------------
# Python wrappers
# --------------------------------------------------------------------------------------------------

_COMPILED: dict = {}  # kind -> the last compiled kernel launched (registers, spills: benchmarks/na_gpu.py)


def _forward(q, k, v, rpb, kernel_size: int, scale: float):
    batch, heads, height, width, head_dim = q.shape
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, height, width), dtype=torch.float32, device=q.device)
    rpb_arg = rpb if rpb is not None else q
    precision = _precision(q.dtype)

    def launch(tile: Tile):
        rwp = _pow2(tile.tw + kernel_size - 1)
        grid = (triton.cdiv(height, tile.th) * triton.cdiv(width, tile.tw), batch * heads)
        _COMPILED["fwd"] = _na2d_fwd_kernel[grid](
            q, k, v, rpb_arg, o, lse, *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(o),
            heads, height, width, head_dim, scale * LOG2E,
            KS=kernel_size, HAS_RPB=rpb is not None, TR=tile.th, TW=tile.tw, RWP=rwp, DP=_pow2(head_dim),
            EVEN_D=head_dim == _pow2(head_dim), PRECISION=precision, num_warps=tile.num_warps, num_stages=tile.num_stages)

    launch(_pick("fwd", kernel_size, head_dim, q.dtype, launch))
    return o, lse


def _backward_dq(q, k, v, rpb, o, lse, do, kernel_size: int, scale: float, rpb_grad: bool):
    """dq, Δ = rowsum(dO ∘ O) and d_rpb (None unless ``rpb_grad``)."""
    batch, heads, height, width, head_dim = q.shape
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    delta = torch.empty_like(lse)
    bp = _pow2(2 * kernel_size - 1, 1)
    partial = {}

    def launch(tile: Tile):
        strips_w = triton.cdiv(width, tile.tw)
        buf = (torch.empty((batch, heads, height, strips_w, kernel_size, bp), dtype=torch.float32, device=q.device)
               if rpb_grad else q)
        partial["buf"] = buf
        _COMPILED["dq"] = _na2d_bwd_dq_kernel[(triton.cdiv(height, tile.th) * strips_w, batch * heads)](
            q, k, v, rpb if rpb is not None else q, o, do, lse, delta, dq, buf,
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(o), *_strides4(do), *_strides4(dq),
            heads, height, width, head_dim, scale * LOG2E, scale,
            KS=kernel_size, HAS_RPB=rpb is not None, RPB_GRAD=rpb_grad, TR=tile.th, TW=tile.tw,
            RWP=_pow2(tile.tw + kernel_size - 1), DP=_pow2(head_dim), BP=bp,
            EVEN_D=head_dim == _pow2(head_dim), PRECISION=_precision(q.dtype), num_warps=tile.num_warps, num_stages=tile.num_stages)

    launch(_pick("dq", kernel_size, head_dim, q.dtype, launch))
    drpb = _reduce_drpb(partial["buf"], height, kernel_size).to(rpb.dtype) if rpb_grad else None
    return dq, delta, drpb


def _reduce_drpb(partial: torch.Tensor, height: int, kernel_size: int) -> torch.Tensor:
    """(B, heads, H, strips, K, BP) partials, row ``a`` of query row ``i`` being d_rpb row
    ``a + s_i - i + K - 1`` → ``(heads, 2K-1, 2K-1)``."""
    nb = 2 * kernel_size - 1
    per_row = partial.sum(dim=(0, 3))                                         # (heads, H, K, BP)
    rows = torch.arange(height, device=partial.device)
    offset = (rows - kernel_size // 2).clamp(0, height - kernel_size) - rows + kernel_size - 1
    heads, _, _, bp = per_row.shape
    by_offset = per_row.new_zeros(heads, kernel_size, kernel_size, bp).index_add_(1, offset, per_row)
    window = torch.arange(kernel_size, device=partial.device)
    target = (window[:, None] + window[None, :]).flatten()                    # offset + a
    drpb = per_row.new_zeros(heads, nb, bp).index_add_(1, target, by_offset.flatten(1, 2))
    return drpb[:, :, :nb]


def _backward_dkdv(q, k, v, rpb, lse, delta, do, kernel_size: int, scale: float):
    batch, heads, height, width, head_dim = q.shape
    dk = torch.empty(q.shape, dtype=k.dtype, device=q.device)
    dv = torch.empty(q.shape, dtype=v.dtype, device=q.device)

    def launch(tile: Tile):
        grid = (triton.cdiv(height, tile.th) * triton.cdiv(width, tile.tw), batch * heads)
        _COMPILED["dkdv"] = _na2d_bwd_dkdv_kernel[grid](
            q, k, v, rpb if rpb is not None else q, do, lse, delta, dk, dv,
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(do),
            heads, height, width, head_dim, scale * LOG2E, scale,
            KS=kernel_size, HAS_RPB=rpb is not None, TR=tile.th, TW=tile.tw,
            QWP=_pow2(tile.tw + kernel_size - 1), DP=_pow2(head_dim),
            EVEN_D=head_dim == _pow2(head_dim), PRECISION=_precision(q.dtype), num_warps=tile.num_warps, num_stages=tile.num_stages)

    launch(_pick("dkdv", kernel_size, head_dim, q.dtype, launch))
    return dk, dv


def _backward(q, k, v, rpb, o, lse, do, kernel_size: int, scale: float, rpb_grad: bool):
    do = _last_dim_contiguous(do)
    dq, delta, drpb = _backward_dq(q, k, v, rpb, o, lse, do, kernel_size, scale, rpb_grad)
    dk, dv = _backward_dkdv(q, k, v, rpb, lse, delta, do, kernel_size, scale)
    return dq, dk, dv, drpb


class NeighborhoodAttention2DTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel_size: int, rpb: Optional[torch.Tensor], scale: float):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        if rpb is not None:
            rpb = rpb.contiguous()
        o, lse = _forward(q, k, v, rpb, kernel_size, scale)
        ctx.save_for_backward(q, k, v, rpb, o, lse)
        ctx.kernel_size, ctx.scale = kernel_size, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, rpb, o, lse = ctx.saved_tensors
        rpb_grad = rpb is not None and ctx.needs_input_grad[4]
        dq, dk, dv, drpb = _backward(q, k, v, rpb, o, lse, do, ctx.kernel_size, ctx.scale, rpb_grad)
        return dq, dk, dv, None, drpb, None


def neighborhood_attention_2d(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor],
                              scale: float) -> torch.Tensor:
    """Validated inputs in (see ``can_run`` in ``segman.ops.neighborhood_attention``), output out."""
    assert dilation == 1, "the triton backend supports dilation 1 only"
    return NeighborhoodAttention2DTriton.apply(q, k, v, kernel_size, rpb, scale)
