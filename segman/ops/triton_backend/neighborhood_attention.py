"""Fused 2-D neighborhood attention with relative position bias (RPB) in Triton: forward and backward.

What it computes (docs/model.md §3.2, dilation 1; ``segman/ops/torch_backend/neighborhood_attention.py``
is the reference).  Per query pixel ``(i, j)`` with window origin ``s = clamp(i - K//2, 0, H - K)``
(same rule for ``j``), the naive PyTorch version and what it moves through memory::

    keys    = k[s_i:s_i+K, s_j:s_j+K]                    # gathers K² keys per query: K²·d reads
    logits  = scale * q[i, j] · keys + rpb[h, key - (i, j) + K - 1]   # a (B, n, H, W, K²) tensor
    p       = softmax(logits)                              # written and read again (K² floats)
    out     = p @ v[window]                                # another K²·d gather

Here the (…, K²) tensors never reach global memory.  A program owns ``TR`` tiles of ``TH`` rows ×
``TW`` (16 or 8) query pixels (``M = TH·TW`` queries, one ``tl.dot`` operand, spread over the warps).  The
tile's queries share their window columns, so a key row is one contiguous run of
``RWP = pow2(TW + K - 1)`` pixels (``pow2(W)`` if the map is narrower); the program walks the
``K + TH - 1`` key rows that some window of the tile holds, ``ROWS`` at a time, scores the whole tile
against their runs with one ``tl.dot`` (head_dim padded to a power of two by masks) and folds it into
an online softmax.  Scored keys per query: ``(K + TH - 1)·RWP`` (rounded up to whole steps) against
``K²`` needed; in exchange each loaded key row serves ``M`` queries and the warps share it.

Masking costs no arithmetic: the bias comes from a *bias table* built per call from ``rpb``
(``bias_table``): ``table[head, e, row, CO + c]`` is ``rpb[head, row, c] / ln 2`` when bias column
``c`` lies in a window whose first column has offset ``e`` from the query (``e`` = window start −
query + K − 1, ``0 ≤ e < K``), else ``-inf``; slab ``e = K`` and row ``2K − 1`` are all ``-inf``
(queries or keys outside the map, key rows outside the window).  One unmasked load per score adds
the bias and the window mask together.  Without rpb the table holds zeros and ``-inf``.  Each head's
table is stored 4 times, copy ``p`` shifted by ``p`` floats, and each query reads the copy in which
its run of bias columns starts 16-byte aligned, so those loads are vectors.  The forward
saves the log-sum-exp per query (``B·n·H·W`` floats) for the backward.

Backward, FlashAttention-2 style, one of two ways (``backward_mode``).  *Split*: two kernels, no atomics,
deterministic:

* ``dq`` kernel (per query tile, same walk): recomputes ``p = exp(logit - lse)``,
  ``ds = p (dO·v - Δ)`` with ``Δ = rowsum(dO ∘ O)`` (computed here and saved for the next kernel),
  accumulates ``dq``, and reduces ``ds`` to the bias row of each (query row, key row) *inside the
  program*: a ``tl.gather`` re-indexes ``ds`` from key columns to bias columns and the ``TW`` queries
  of each tile row are summed.  Each program stores, per query row, the ``K`` rows of its window
  once (plain stores into a ``(B, H, W/TW, heads, K, NBC)`` buffer, rows padded to a multiple of 4
  floats); one small kernel (``_sum_partials``) shifts window rows to d_rpb rows and sums them into
  ``d_rpb``.  No atomics.
* ``dk/dv`` kernel (per key tile): walks the rows of queries whose windows hold a key row of the
  tile (``K + TH - 1`` inside the map, more at the borders where windows are shifted inwards),
  recomputes ``p`` and ``ds`` transposed, and accumulates ``dk`` and ``dv`` in registers (with the
  tile's ``prefetch``, each step's query rows are loaded one step ahead, into registers).

*Fused*: the dk/dv kernel's walk alone computes ``p`` and ``ds`` once instead of twice.  A small kernel
first computes Δ and zeroes an fp32 ``dq``; each step then adds ``scale · dsᵀ @ k`` to ``dq`` with
vector atomics and stores the d_rpb partials of its key rows (a query run then holds a key tile's
whole band of query columns, so each (key row, query row) pair is one step).  The order of the
atomic additions varies, so ``dq`` may differ from run to run in its last bits: the split backward
serves whenever determinism is asked for.  Which of the two is faster depends on the shapes (the
fused kernel holds more registers); the autotuner times both.

Precision: products accumulate in fp32; fp16/bf16 probabilities are rounded to v's dtype before
``p @ v`` (as NATTEN does).  fp32 inputs use ``tf32x3`` dot products (about fp32 accuracy) unless
``torch.backends.cuda.matmul`` allows TF32, in which case plain ``tf32`` is used.

Tiles are picked per (head_dim, kernel size, dtype) by a narrow autotuner over a few candidates,
timed on the GPU by CUDA-graph replay (``SEGMAN_NA_TRITON_AUTOTUNE=0`` uses the first candidate and
the split backward; ``SEGMAN_NA_BACKWARD=split|fused`` forces a backward).  The picks are kept per GPU
model and Triton version in ``~/.cache/segman/na_triton_tuning.json`` (``$SEGMAN_CACHE_DIR``), so
later runs on the machine skip the timing and the compilation of the candidates they do not use.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .._layout import last_dim_contiguous

LOG2E = 1.4426950408889634
LOG2E_JIT = tl.constexpr(LOG2E)  # the same, readable inside kernels
MAX_TW = 16  # the widest tile (pixels); the bias table is laid out for it


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
def _aligned(sb, sn, sh, sw, ALIGN: tl.constexpr):
    """A tensor's batch, head, row and pixel strides, rebuilt as ``(s // ALIGN) * ALIGN`` (equal: the
    launch checked that they are multiples of ``ALIGN`` elements) so that Triton knows they are: rows
    of a head_dim that is a multiple of 4 but not of 16 (20, 24, 28, 36) then load and store as
    vectors instead of one element per instruction."""
    return (sb // ALIGN) * ALIGN, (sn // ALIGN) * ALIGN, (sh // ALIGN) * ALIGN, (sw // ALIGN) * ALIGN


# --------------------------------------------------------------------------------------------------
# Head-dim rows.  A row of ``D`` elements is held as two parts: part A, columns ``0 ..< DA``, and with
# ``SPLIT`` part B, columns ``DA ..< DA + DB`` (both powers of two, for ``tl.dot``).  Splitting a head
# dim of 36 into 32 + 16 instead of padding it to 64 saves a quarter of the registers and the dot
# work.  The last part is padded with zeros past ``D`` unless ``EVEN_D``.
# --------------------------------------------------------------------------------------------------

@triton.jit
def _load_part(ptrs, row_ok, col_ok, ROW_MASK: tl.constexpr, COL_MASK: tl.constexpr):
    if ROW_MASK and COL_MASK:
        return tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    if ROW_MASK:
        return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    if COL_MASK:
        return tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _load_head(base, rows, row_ok, D, ROW_MASK: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
               SPLIT: tl.constexpr, EVEN_D: tl.constexpr):
    """Rows ``base + rows[r] + (0 ..< D)`` as part A ``[R, DA]`` and part B ``[R, DB]`` (part A again
    without ``SPLIT``); zeros past ``D`` and, with ``ROW_MASK``, in rows where ``row_ok`` is False."""
    da = tl.arange(0, DA)
    xa = _load_part(base + rows[:, None] + da[None, :], row_ok, da < D, ROW_MASK, not (SPLIT or EVEN_D))
    xb = xa
    if SPLIT:
        db = DA + tl.arange(0, DB)
        xb = _load_part(base + rows[:, None] + db[None, :], row_ok, db < D, ROW_MASK, not EVEN_D)
    return xa, xb


@triton.jit
def _store_head(base, rows, row_ok, xa, xb, D, DA: tl.constexpr, DB: tl.constexpr, SPLIT: tl.constexpr):
    """Stores parts ``xa``, ``xb`` of rows ``base + rows[r] + (0 ..< D)`` where ``row_ok``."""
    da = tl.arange(0, DA)
    tl.store(base + rows[:, None] + da[None, :], xa.to(base.dtype.element_ty), mask=row_ok[:, None] & (da < D)[None, :])
    if SPLIT:
        db = DA + tl.arange(0, DB)
        tl.store(base + rows[:, None] + db[None, :], xb.to(base.dtype.element_ty),
                 mask=row_ok[:, None] & (db < D)[None, :])


@triton.jit
def _dot_rows(xa, xb, ya, yb, SPLIT: tl.constexpr, PRECISION: tl.constexpr, acc=None):
    """``acc + x · yᵀ`` over the head dim, ``[R, S]`` from rows ``x [R, D]`` and ``y [S, D]`` in parts."""
    out = tl.dot(xa, tl.trans(ya), acc, input_precision=PRECISION)
    if SPLIT:
        out = tl.dot(xb, tl.trans(yb), out, input_precision=PRECISION)
    return out


@triton.jit
def _dot_acc(p, ya, yb, acc_a, acc_b, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + p @ y`` per part, ``p [R, S]`` (cast to ``y``'s dtype), ``y [S, D]`` in parts."""
    acc_a = tl.dot(p.to(ya.dtype), ya, acc_a, input_precision=PRECISION)
    if SPLIT:
        acc_b = tl.dot(p.to(yb.dtype), yb, acc_b, input_precision=PRECISION)
    return acc_a, acc_b


# --------------------------------------------------------------------------------------------------
# Tiles.  A program owns ``TR`` tiles, one below the other, of ``TH`` pixel rows × ``TW`` columns.
# Element ``m`` of a tile (``M = TH·TW``) is pixel (row0 + m % TH, col0 + m // TH): column-major, so
# that in the row-cyclic register layout of the d_rpb reduction one warp holds one tile row.  The
# forward and dq kernels tile queries and walk key rows; the dk/dv kernel tiles keys and walks chunks
# of query rows.  Each scores ``ROWS`` rows or chunks per step with one dot.  The bias table (module
# docstring) has ``K + 1`` slabs of ``2K`` rows × ``CW`` columns per head; bias column ``c`` sits at
# column ``CO + c``.
# --------------------------------------------------------------------------------------------------

@triton.jit
def _table_copy(KS: tl.constexpr, CW: tl.constexpr):
    """Floats per copy of one head's bias table: ``K + 1`` slabs of ``2K × CW`` and 4 of shift room."""
    return (KS + 1) * 2 * KS * CW + 4


@triton.jit
def _program_place(heads, table_heads, W, KS: tl.constexpr, CW: tl.constexpr, rows_per_program, TW: tl.constexpr):
    """This program's (batch, head) index ``bh``, as batch ``b`` (int64) and head ``n``; the first row
    and first column of its pixels; and its head's offset in the bias table."""
    bh = tl.program_id(1)
    n = bh % heads
    pid_t = tl.program_id(0)
    tiles_w = tl.cdiv(W, TW)
    return (bh, (bh // heads).to(tl.int64), n, (pid_t // tiles_w) * rows_per_program, (pid_t % tiles_w) * TW,
            (n % table_heads) * (4 * _table_copy(KS, CW)))


@triton.jit
def _tile_pixels(i0, j0, H, W, TH: tl.constexpr, TW: tl.constexpr):
    """Per tile element: (clamped) row, column and whether the pixel is in the map."""
    m = tl.arange(0, TH * TW)
    row = i0 + m % TH
    col = j0 + m // TH
    return tl.minimum(row, H - 1), col, (row < H) & (col < W)


@triton.jit
def _query_tile(i0, j0, H, W, table_head, col0, KS: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                CO: tl.constexpr, CW: tl.constexpr, VEC_BIAS: tl.constexpr):
    """A query tile at pixel ``(i0, j0)`` whose key rows start at column ``col0``, per element:
    (clamped) row, column, in-map flag, window start row, and the table offset of key column
    ``col0``'s bias in row 0 of its slab (with ``VEC_BIAS``: in the copy of the table where that
    offset is a multiple of 4; copy ``p`` holds the table shifted by ``p`` floats); the tile's key
    rows are ``lo ..< hi``."""
    qi, qj, q_ok = _tile_pixels(i0, j0, H, W, TH, TW)
    slab = tl.where(q_ok, _window_start(qj, W, KS) - qj + (KS - 1), KS)
    col_base = table_head + slab * (2 * KS * CW) + CO + (KS - 1) - qj + col0  # of key column 0
    if VEC_BIAS:
        col_base += ((-col_base) & 3) * (_table_copy(KS, CW) + 1)  # the copy where it is 16-byte aligned
    lo = _window_start(i0, H, KS)
    hi = _window_start(tl.minimum(i0 + TH, H) - 1, H, KS) + KS
    return qi, qj, q_ok, _window_start(qi, H, KS), col_base, lo, hi


@triton.jit
def _key_run(K, V, b, n, skb, skn, skw, svb, svn, svw, j0, W, KS: tl.constexpr, RWP: tl.constexpr,
             ROWS: tl.constexpr, TW: tl.constexpr):
    """The keys of a query tile's step of ``ROWS`` key rows, ``ROWS·RWP`` keys, row after row: the K and
    V bases of (batch ``b``, head ``n``) (scalars; offsets from them fit int32), the loaded columns'
    offsets from them (clamped into the union of the tile's windows), and the first key column."""
    col0 = _window_start(j0, W, KS)
    col1 = _window_start(tl.minimum(j0 + TW, W) - 1, W, KS) + KS
    columns = tl.minimum(col0 + tl.arange(0, ROWS * RWP) % RWP, col1 - 1)
    return K + b * skb + n * skn, V + b * svb + n * svn, columns * skw, columns * svw, col0


@triton.jit
def _key_rows(qa, qb, K, V, k_cols, v_cols, kr, H, skh, svh, qi, si, col_base, TABLE, qk_scale, D,
              KS: tl.constexpr, CW: tl.constexpr, RWP: tl.constexpr, ROWS: tl.constexpr, DA: tl.constexpr,
              DB: tl.constexpr, SPLIT: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
              VEC_BIAS: tl.constexpr, BIAS_IN_DOT: tl.constexpr):
    """Key rows ``kr ..< kr + ROWS`` (clamped into the map for loading) of a query tile, as one run of
    ``N = ROWS·RWP`` keys: ``k``, ``v`` (``[N, D]`` each in two parts) and the logits ``[M, N]``,
    ``-inf`` outside each query's window (rows past the map are outside every window): log2-scaled,
    or with ``BIAS_IN_DOT`` in the dot's units (times ``qk_scale`` is log2-scaled), the bias added
    as the dot's accumulator (loaded into registers, not staged through shared memory)."""
    n = tl.arange(0, ROWS * RWP)
    if ROWS == 1:  # a scalar key row and one bias row per query: fewer registers
        K += tl.minimum(kr, H - 1) * skh
        V += tl.minimum(kr, H - 1) * svh
        starts = col_base + tl.where((kr >= si) & (kr < si + KS), kr - qi + (KS - 1), 2 * KS - 1) * CW
        if VEC_BIAS:
            starts = tl.multiple_of(starts, 4)
        offsets = starts[:, None] + n[None, :]
    else:
        key_row = kr + n // RWP
        k_cols += tl.minimum(key_row, H - 1) * skh
        v_cols += tl.minimum(key_row, H - 1) * svh
        inside = (key_row[None, :] >= si[:, None]) & (key_row[None, :] < si[:, None] + KS)
        row = tl.where(inside, key_row[None, :] - qi[:, None] + (KS - 1), 2 * KS - 1)
        offsets = col_base[:, None] + row * CW + (n % RWP)[None, :]
        if VEC_BIAS:  # runs of 4 along a row start 16-byte aligned: col_base, CW and RWP are multiples of 4
            offsets = tl.max_contiguous(tl.multiple_of(offsets, [1, 4]), [1, 4])
    ka, kb = _load_head(K, k_cols, k_cols, D, False, DA, DB, SPLIT, EVEN_D)
    va, vb = _load_head(V, v_cols, v_cols, D, False, DA, DB, SPLIT, EVEN_D)
    bias = tl.load(TABLE + offsets)
    if BIAS_IN_DOT:
        return ka, kb, va, vb, _dot_rows(qa, qb, ka, kb, SPLIT, PRECISION, bias * (1.0 / qk_scale))
    return ka, kb, va, vb, _dot_rows(qa, qb, ka, kb, SPLIT, PRECISION) * qk_scale + bias


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------

@triton.jit
def _na2d_fwd_kernel(
    Q, K, V, TABLE, O, LSE,
    sqb, sqn, sqh, sqw, skb, skn, skh, skw, svb, svn, svh, svw, sob, son, soh, sow,
    heads, H, W, D, qk_scale, table_heads,
    KS: tl.constexpr, TR: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, ROWS: tl.constexpr,
    RWP: tl.constexpr, CO: tl.constexpr, CW: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
    SPLIT: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr, ALIGN: tl.constexpr, VEC_BIAS: tl.constexpr,
    BIAS_IN_DOT: tl.constexpr,
):
    sqb, sqn, sqh, sqw = _aligned(sqb, sqn, sqh, sqw, ALIGN)
    skb, skn, skh, skw = _aligned(skb, skn, skh, skw, ALIGN)
    svb, svn, svh, svw = _aligned(svb, svn, svh, svw, ALIGN)
    sob, son, soh, sow = _aligned(sob, son, soh, sow, ALIGN)
    D = (D // ALIGN) * ALIGN
    unit = qk_scale if BIAS_IN_DOT else 1.0  # log2 units per unit of the logits _key_rows returns
    pid_bh, b, n, i_first, j0, table_head = _program_place(heads, table_heads, W, KS, CW, TR * TH, TW)
    k_base, v_base, k_cols, v_cols, col0 = _key_run(K, V, b, n, skb, skn, skw, svb, svn, svw, j0, W, KS, RWP, ROWS, TW)

    for i0 in range(i_first, tl.minimum(i_first + TR * TH, H), TH):
        qi, qj, q_ok, si, col_base, r_lo, r_hi = _query_tile(i0, j0, H, W, table_head, col0, KS, TH, TW, CO, CW,
                                                              VEC_BIAS)
        qa, qb = _load_head(Q + b * sqb + n * sqn, qi * sqh + qj * sqw, q_ok, D, True, DA, DB, SPLIT, EVEN_D)
        m_i = tl.full([TH * TW], -1.0e30, tl.float32)
        l_i = tl.zeros([TH * TW], tl.float32)
        acc_a = tl.zeros([TH * TW, DA], tl.float32)
        acc_b = tl.zeros([TH * TW, DB], tl.float32)
        for kr in range(r_lo, r_hi, ROWS):  # rows past r_hi are outside every window
            _, _, va, vb, s = _key_rows(qa, qb, k_base, v_base, k_cols, v_cols, kr, H, skh, svh, qi, si, col_base,
                                        TABLE, qk_scale, D, KS, CW, RWP, ROWS, DA, DB, SPLIT, EVEN_D, PRECISION,
                                        VEC_BIAS, BIAS_IN_DOT)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2((m_i - m_new) * unit)
            p = tl.exp2(s * unit - (m_new * unit)[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc_a, acc_b = _dot_acc(p, va, vb, acc_a * alpha[:, None], acc_b * alpha[:, None], SPLIT, PRECISION)
            m_i = m_new
        l_i = tl.where(l_i > 0.0, l_i, 1.0)
        _store_head(O + b * sob + n * son, qi * soh + qj * sow, q_ok, acc_a / l_i[:, None], acc_b / l_i[:, None], D,
                    DA, DB, SPLIT)
        tl.store(LSE + (pid_bh.to(tl.int64) * H + qi) * W + qj, m_i * unit + tl.log2(l_i), mask=q_ok)


# --------------------------------------------------------------------------------------------------
# Backward, kernel 1: dq, Δ and the per-program d_rpb partials (per query tile)
# --------------------------------------------------------------------------------------------------

@triton.jit
def _dq_key_rows(dq_a, dq_b, qa, qb, do_a, do_b, K, V, k_cols, v_cols, kr, H, skh, svh, qi, si, col_base, TABLE,
                 qk_scale, lse, delta, D, g_row, g_col, g_idx, g_ok, row_si, row_ok, part, DRPB,
                 KS: tl.constexpr, CW: tl.constexpr, RWP: tl.constexpr, ROWS: tl.constexpr, TH: tl.constexpr,
                 TW: tl.constexpr, BP: tl.constexpr, NBC: tl.constexpr, RPB_GRAD: tl.constexpr, DA: tl.constexpr,
                 DB: tl.constexpr, SPLIT: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
                 VEC_BIAS: tl.constexpr, BIAS_IN_DOT: tl.constexpr):
    """One step of the dq walk, key rows ``kr ..< kr + ROWS``: returns ``dq + ds @ k`` (``[M, D]`` in
    parts); stores these rows' d_rpb partials (per query row, by window row)."""
    ka, kb, va, vb, s = _key_rows(qa, qb, K, V, k_cols, v_cols, kr, H, skh, svh, qi, si, col_base, TABLE, qk_scale,
                                  D, KS, CW, RWP, ROWS, DA, DB, SPLIT, EVEN_D, PRECISION, VEC_BIAS, BIAS_IN_DOT)
    if BIAS_IN_DOT:
        s *= qk_scale                                               # to log2 units
    p = tl.exp2(s - lse[:, None])                                   # 0 outside windows (s = -inf)
    ds = p * (_dot_rows(do_a, do_b, va, vb, SPLIT, PRECISION) - delta[:, None])
    if RPB_GRAD:  # per tile row: sum ds along each key-minus-query diagonal of each key row
        y = tl.where(g_ok, tl.gather(ds, g_idx, axis=1), 0.0)                          # [M, ROWS·BP]
        y = tl.sum(tl.reshape(y, (TW, TH, ROWS * BP)), axis=0)                         # [TH, ROWS·BP]
        if ROWS == 1:  # a scalar key row: fewer registers
            key_row = kr
            a = (kr - row_si)[:, None]                                                  # window row
        else:
            key_row = kr + g_row
            a = key_row[None, :] - row_si[:, None]
        tl.store(DRPB + ((part - row_si) * NBC)[:, None] + (key_row * NBC + g_col)[None, :], y,
                 mask=row_ok[:, None] & (a >= 0) & (a < KS) & (g_col < NBC)[None, :])
    return _dot_acc(ds, ka, kb, dq_a, dq_b, SPLIT, PRECISION)


@triton.jit
def _na2d_bwd_dq_kernel(
    Q, K, V, TABLE, O, DO, LSE, DELTA, DQ, DRPB,
    sqb, sqn, sqh, sqw, skb, skn, skh, skw, svb, svn, svh, svw,
    sob, son, soh, sow, sdb, sdn, sdh, sdw, sgb, sgn, sgh, sgw,
    heads, H, W, D, qk_scale, scale, table_heads,
    KS: tl.constexpr, RPB_GRAD: tl.constexpr, TR: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    ROWS: tl.constexpr, RWP: tl.constexpr, CO: tl.constexpr, CW: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
    SPLIT: tl.constexpr, BP: tl.constexpr, NBC: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
    ALIGN: tl.constexpr, VEC_BIAS: tl.constexpr, BIAS_IN_DOT: tl.constexpr,
):
    tl.static_assert((BP >= NBC) & (NBC >= 2 * KS - 1))
    sqb, sqn, sqh, sqw = _aligned(sqb, sqn, sqh, sqw, ALIGN)
    skb, skn, skh, skw = _aligned(skb, skn, skh, skw, ALIGN)
    svb, svn, svh, svw = _aligned(svb, svn, svh, svw, ALIGN)
    sob, son, soh, sow = _aligned(sob, son, soh, sow, ALIGN)
    sdb, sdn, sdh, sdw = _aligned(sdb, sdn, sdh, sdw, ALIGN)
    sgb, sgn, sgh, sgw = _aligned(sgb, sgn, sgh, sgw, ALIGN)
    D = (D // ALIGN) * ALIGN
    pid_bh, b, n, i_first, j0, table_head = _program_place(heads, table_heads, W, KS, CW, TR * TH, TW)
    k_base, v_base, k_cols, v_cols, col0 = _key_run(K, V, b, n, skb, skn, skw, svb, svn, svw, j0, W, KS, RWP, ROWS, TW)

    # d_rpb: bias column c of query column qj, in row r of a step, sits at key g_idx[m, r·BP + c].
    qj_tile = j0 + tl.arange(0, TH * TW) // TH
    g = tl.arange(0, ROWS * BP)
    g_row = g // BP
    g_col = g % BP
    g_key = g_col[None, :] + (qj_tile - (KS - 1) - col0)[:, None]
    g_ok = (g_key >= 0) & (g_key < RWP) & (g_col < 2 * KS - 1)[None, :] & (qj_tile < W)[:, None]
    g_idx = tl.minimum(tl.maximum(g_key, 0), RWP - 1)
    if ROWS > 1:
        g_idx += g_row[None, :] * RWP
    tiles_w = tl.cdiv(W, TW)

    for i0 in range(i_first, tl.minimum(i_first + TR * TH, H), TH):
        qi, qj, q_ok, si, col_base, r_lo, r_hi = _query_tile(i0, j0, H, W, table_head, col0, KS, TH, TW, CO, CW,
                                                              VEC_BIAS)
        qa, qb = _load_head(Q + b * sqb + n * sqn, qi * sqh + qj * sqw, q_ok, D, True, DA, DB, SPLIT, EVEN_D)
        oa, ob = _load_head(O + b * sob + n * son, qi * soh + qj * sow, q_ok, D, True, DA, DB, SPLIT, EVEN_D)
        do_a, do_b = _load_head(DO + b * sdb + n * sdn, qi * sdh + qj * sdw, q_ok, D, True, DA, DB, SPLIT, EVEN_D)
        delta = tl.sum(do_a.to(tl.float32) * oa.to(tl.float32), 1)
        if SPLIT:
            delta += tl.sum(do_b.to(tl.float32) * ob.to(tl.float32), 1)
        stat = (pid_bh.to(tl.int64) * H + qi) * W + qj
        tl.store(DELTA + stat, delta, mask=q_ok)
        lse = tl.load(LSE + stat, mask=q_ok, other=0.0)
        # d_rpb partials of the tile's query rows: (batch, query row, tile column, head, window row, NBC),
        # each element stored once by the walk.
        row_t = i0 + tl.arange(0, TH)
        row_ok = row_t < H
        row_si = _window_start(tl.minimum(row_t, H - 1), H, KS)
        part = (((b * H + row_t) * tiles_w + j0 // TW) * heads + n) * KS
        dq_a = tl.zeros([TH * TW, DA], tl.float32)
        dq_b = tl.zeros([TH * TW, DB], tl.float32)
        for kr in range(r_lo, r_hi, ROWS):  # rows past r_hi are outside every window: ds = 0, nothing stored
            dq_a, dq_b = _dq_key_rows(dq_a, dq_b, qa, qb, do_a, do_b, k_base, v_base, k_cols, v_cols, kr, H, skh,
                                      svh, qi, si, col_base, TABLE, qk_scale, lse, delta, D, g_row, g_col, g_idx,
                                      g_ok, row_si, row_ok, part, DRPB, KS, CW, RWP, ROWS, TH, TW, BP, NBC,
                                      RPB_GRAD, DA, DB, SPLIT, EVEN_D, PRECISION, VEC_BIAS, BIAS_IN_DOT)
        _store_head(DQ + b * sgb + n * sgn, qi * sgh + qj * sgw, q_ok, dq_a * scale, dq_b * scale, D, DA, DB, SPLIT)


# --------------------------------------------------------------------------------------------------
# Backward, kernel 2: dk and dv (per key tile)
# --------------------------------------------------------------------------------------------------

class _QueryChunks(NamedTuple):
    """What a step of the dk/dv walk loads (``_query_chunks``); ``S = ROWS·QWP`` queries."""

    qi: tl.tensor      # query rows [S] (clamped to the last step)
    qc_in: tl.tensor   # query columns [S] (clamped into the band)
    qc_ok: tl.tensor   # [S]: a query of this step and of the band
    qa: tl.tensor      # q [S, DA], [S, DB]
    qb: tl.tensor
    do_a: tl.tensor    # dO, likewise
    do_b: tl.tensor
    lse: tl.tensor     # [S]
    delta: tl.tensor   # [S]
    bias: tl.tensor    # [keys, S]: log2-scaled bias, -inf outside the windows


@triton.jit
def _query_chunks(Q, DO, LSE, DELTA, it, n_it, n_cc, lo_r, lo_c, hi_c, H, W, sqh, sqw, sdh, sdw, kr, kc, k_ok,
                  table_head, TABLE, D, KS: tl.constexpr, CO: tl.constexpr, CW: tl.constexpr, QWP: tl.constexpr,
                  ROWS: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, SPLIT: tl.constexpr,
                  EVEN_D: tl.constexpr):
    """The loads of steps ``it ..< it + ROWS`` of the dk/dv walk (step ``t``: query row
    ``lo_r + t // n_cc``, chunk ``t % n_cc`` of the query columns; steps past ``n_it`` get the last
    step's rows, masked to ``-inf``), as a ``_QueryChunks``."""
    n = tl.arange(0, ROWS * QWP)
    step = it
    if ROWS > 1:  # else a scalar step: fewer registers
        step = it + n // QWP
    step_ok = step < n_it
    step = tl.minimum(step, n_it - 1)
    qi = lo_r + step // n_cc
    qc = lo_c + (step % n_cc) * QWP + n % QWP
    qc_ok = (qc <= hi_c) & step_ok
    qc_in = tl.minimum(qc, hi_c)                                    # past the band: loaded, masked out
    qa, qb = _load_head(Q, qi * sqh + qc_in * sqw, qc_ok, D, False, DA, DB, SPLIT, EVEN_D)
    do_a, do_b = _load_head(DO, qi * sdh + qc_in * sdw, qc_ok, D, False, DA, DB, SPLIT, EVEN_D)
    lse = tl.load(LSE + qi * W + qc_in)
    delta = tl.load(DELTA + qi * W + qc_in)
    # The table: rows from the keys (relative to query row qi), slabs and columns from the queries.
    si = _window_start(qi, H, KS)
    qi_r = qi
    if ROWS > 1:
        qi_r = qi[None, :]
        si = si[None, :]
    row = tl.where((kr[:, None] >= si) & (kr[:, None] < si + KS) & k_ok[:, None], kr[:, None] - qi_r + (KS - 1),
                   2 * KS - 1)
    slab = tl.where(qc_ok, _window_start(qc, W, KS) - qc + (KS - 1), KS)
    col = tl.where(qc_ok, CO + (KS - 1) - qc, CO - lo_c)             # the -inf slab: kc - lo_c < CW - CO
    bias = tl.load(TABLE + (table_head + row * CW + kc[:, None]) + (slab * (2 * KS * CW) + col)[None, :])
    return _QueryChunks(qi, qc_in, qc_ok, qa, qb, do_a, do_b, lse, delta, bias)


@triton.jit
def _dkdv_step(dk_a, dk_b, dv_a, dv_b, ka, kb, va, vb, c, DQ, DRPB, it, n_it, lo_r, W, r0, H, qk_scale, scale, D,
               g_idx, g_ok, drpb_rows, KS: tl.constexpr, ROWS: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
               DA: tl.constexpr, DB: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
               FUSED: tl.constexpr, RPB_GRAD: tl.constexpr, BP: tl.constexpr, NBC: tl.constexpr):
    """Steps ``it ..< it + ROWS`` of the dk/dv walk from their loads ``c`` (``_QueryChunks``), scored by
    one dot: returns ``dk + ds @ q`` and ``dv + p @ dO``, each in its two parts.  ``FUSED`` (one chunk
    per row): also adds ``scale · dsᵀ @ k`` to the fp32 ``dq`` (atomics) and stores the d_rpb partials
    of the tile's key rows against these query rows."""
    s = _dot_rows(ka, kb, c.qa, c.qb, SPLIT, PRECISION) * qk_scale + c.bias                  # [keys, queries]
    p = tl.exp2(s - c.lse[None, :])
    ds = p * (_dot_rows(va, vb, c.do_a, c.do_b, SPLIT, PRECISION) - c.delta[None, :])
    dk_a, dk_b = _dot_acc(ds, c.qa, c.qb, dk_a, dk_b, SPLIT, PRECISION)
    dv_a, dv_b = _dot_acc(p, c.do_a, c.do_b, dv_a, dv_b, SPLIT, PRECISION)
    if FUSED:
        dst = DQ + (c.qi * W + c.qc_in) * D                                                # dq: contiguous fp32
        dq_a = tl.dot(tl.trans(ds).to(ka.dtype), ka, input_precision=PRECISION) * scale
        da = tl.arange(0, DA)
        tl.atomic_add(dst[:, None] + da[None, :], dq_a, mask=c.qc_ok[:, None] & (da < D)[None, :], sem="relaxed")
        if SPLIT:
            dq_b = tl.dot(tl.trans(ds).to(kb.dtype), kb, input_precision=PRECISION) * scale
            db = DA + tl.arange(0, DB)
            tl.atomic_add(dst[:, None] + db[None, :], dq_b, mask=c.qc_ok[:, None] & (db < D)[None, :],
                          sem="relaxed")
        if RPB_GRAD:  # per key row of the tile: sum ds along each key-minus-query diagonal, per query row
            y = tl.where(g_ok, tl.gather(ds, g_idx, axis=1), 0.0)                      # [M, ROWS·BP]
            y = tl.sum(tl.reshape(y, (TW, TH, ROWS * BP)), axis=0)                     # [TH, ROWS·BP]
            g = tl.arange(0, ROWS * BP)
            r = (r0 + tl.arange(0, TH))[:, None] - (lo_r + it + g // BP)[None, :] + (KS - 1)   # d_rpb row
            col = g % BP
            tl.store(DRPB + (drpb_rows[:, None] + r) * NBC + col[None, :], y,
                     mask=(r0 + tl.arange(0, TH) < H)[:, None] & (r >= 0) & (r < 2 * KS - 1)
                     & ((it + g // BP) < n_it)[None, :] & (col < NBC)[None, :])
    return dk_a, dk_b, dv_a, dv_b


@triton.jit
def _na2d_bwd_dkdv_kernel(
    Q, K, V, TABLE, DO, LSE, DELTA, DK, DV, DQ, DRPB,
    sqb, sqn, sqh, sqw, skb, skn, skh, skw, svb, svn, svh, svw, sdb, sdn, sdh, sdw,
    heads, H, W, D, qk_scale, scale, table_heads,
    KS: tl.constexpr, TR: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, ROWS: tl.constexpr,
    QWP: tl.constexpr, CO: tl.constexpr, CW: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, SPLIT: tl.constexpr,
    EVEN_D: tl.constexpr, PRECISION: tl.constexpr, ALIGN: tl.constexpr, FUSED: tl.constexpr,
    RPB_GRAD: tl.constexpr, BP: tl.constexpr, NBC: tl.constexpr, PREFETCH: tl.constexpr,
):
    """dk and dv per key tile; with ``FUSED`` also dq (``DQ``: fp32, zeroed, contiguous) and the d_rpb
    partials ``(B, H, W / TW, heads, 2K - 1, NBC)`` by key row and d_rpb row (``QWP`` must then hold a
    tile's whole band of query columns: one chunk per query row).  ``PREFETCH``: each step's loads
    are issued one step ahead, into registers."""
    sqb, sqn, sqh, sqw = _aligned(sqb, sqn, sqh, sqw, ALIGN)
    skb, skn, skh, skw = _aligned(skb, skn, skh, skw, ALIGN)
    svb, svn, svh, svw = _aligned(svb, svn, svh, svw, ALIGN)
    sdb, sdn, sdh, sdw = _aligned(sdb, sdn, sdh, sdw, ALIGN)
    D = (D // ALIGN) * ALIGN
    pid_bh, b, n, r_first, j0, table_head = _program_place(heads, table_heads, W, KS, CW, TR * TH, TW)
    q_base = Q + b * sqb + n * sqn
    do_base = DO + b * sdb + n * sdn
    stats = pid_bh.to(tl.int64) * H * W
    # Query columns whose windows hold a key column of the tile: lo_c ..= hi_c, in QWP-wide chunks.
    lo_c = _query_lo(j0, KS)
    hi_c = _query_hi(tl.minimum(j0 + TW, W) - 1, W, KS)
    n_cc = 1 if FUSED else tl.cdiv(hi_c - lo_c + 1, QWP)
    # FUSED d_rpb: bias column c of key m, against step row g, sits at query g_idx[m, g·BP + c].
    kc_tile = tl.minimum(j0 + tl.arange(0, TH * TW) // TH, W - 1)
    g = tl.arange(0, ROWS * BP)
    q_pos = (kc_tile - lo_c + (KS - 1))[:, None] - (g % BP)[None, :]
    g_ok = (q_pos >= 0) & (q_pos < QWP) & (g % BP < 2 * KS - 1)[None, :]
    g_idx = tl.minimum(tl.maximum(q_pos, 0), QWP - 1) + (g // BP * QWP)[None, :]

    for r0 in range(r_first, tl.minimum(r_first + TR * TH, H), TH):
        kr, kc, k_ok = _tile_pixels(r0, j0, H, W, TH, TW)
        kc = tl.minimum(kc, W - 1)
        ka, kb = _load_head(K + b * skb + n * skn, kr * skh + kc * skw, k_ok, D, True, DA, DB, SPLIT, EVEN_D)
        va, vb = _load_head(V + b * svb + n * svn, kr * svh + kc * svw, k_ok, D, True, DA, DB, SPLIT, EVEN_D)
        lo_r = _query_lo(r0, KS)                                    # query rows whose windows hold a key row
        n_it = (_query_hi(tl.minimum(r0 + TH, H) - 1, H, KS) - lo_r + 1) * n_cc
        drpb_rows = (((b * H + r0 + tl.arange(0, TH)) * tl.cdiv(W, TW) + j0 // TW) * heads + n) * (2 * KS - 1)
        dk_a = tl.zeros([TH * TW, DA], tl.float32)
        dv_a = tl.zeros([TH * TW, DA], tl.float32)
        dk_b = tl.zeros([TH * TW, DB], tl.float32)
        dv_b = tl.zeros([TH * TW, DB], tl.float32)
        ahead = ROWS if PREFETCH else 0  # steps between a load and its use
        if PREFETCH:
            c = _query_chunks(q_base, do_base, LSE + stats, DELTA + stats, 0, n_it, n_cc, lo_r, lo_c, hi_c, H, W,
                              sqh, sqw, sdh, sdw, kr, kc, k_ok, table_head, TABLE, D, KS, CO, CW, QWP, ROWS, DA, DB,
                              SPLIT, EVEN_D)
        for it in range(0, n_it, ROWS):
            loaded = _query_chunks(q_base, do_base, LSE + stats, DELTA + stats, it + ahead, n_it, n_cc, lo_r, lo_c,
                                   hi_c, H, W, sqh, sqw, sdh, sdw, kr, kc, k_ok, table_head, TABLE, D, KS, CO, CW,
                                   QWP, ROWS, DA, DB, SPLIT, EVEN_D)
            if not PREFETCH:
                c = loaded
            dk_a, dk_b, dv_a, dv_b = _dkdv_step(
                dk_a, dk_b, dv_a, dv_b, ka, kb, va, vb, c, DQ + stats * D, DRPB, it, n_it, lo_r, W, r0, H,
                qk_scale, scale, D, g_idx, g_ok, drpb_rows, KS, ROWS, TH, TW, DA, DB, SPLIT, PRECISION, FUSED,
                RPB_GRAD, BP, NBC)
            if PREFETCH:  # the next steps' loads were in flight while these were computed
                c = loaded
        rows = ((pid_bh.to(tl.int64) * H + kr) * W + kc) * D                                # dk, dv: contiguous
        _store_head(DK, rows, k_ok, dk_a * scale, dk_b * scale, D, DA, DB, SPLIT)
        _store_head(DV, rows, k_ok, dv_a, dv_b, D, DA, DB, SPLIT)


# --------------------------------------------------------------------------------------------------
# The bias table (module docstring) from rpb, and d_rpb from the dq kernel's partials
# --------------------------------------------------------------------------------------------------

@triton.jit
def _bias_table_kernel(RPB, TABLE, KS: tl.constexpr, CO: tl.constexpr, CW: tl.constexpr, BLOCK: tl.constexpr):
    """``TABLE[head]``: the 4 shifted copies of the head's table; one program per ``BLOCK`` floats."""
    copy = _table_copy(KS, CW)
    f = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)                 # over the 4 copies, one after another
    u = f % copy - f // copy                                            # copy p: the table shifted by p
    slab = u // (2 * KS * CW)
    row = (u // CW) % (2 * KS)
    c = u % CW - CO                                                     # bias column
    inside = (u >= 0) & (slab < KS) & (row < 2 * KS - 1) & (c >= slab) & (c < slab + KS) & (f < 4 * copy)
    nb2 = (2 * KS - 1) * (2 * KS - 1)
    head = tl.program_id(1)
    bias = tl.load(RPB + head * nb2 + row * (2 * KS - 1) + c, mask=inside, other=float("-inf"))
    tl.store(TABLE + head * (4 * copy) + f, bias.to(tl.float32) * LOG2E_JIT, mask=f < 4 * copy)


@triton.jit
def _drpb_sum_kernel(PARTS, OUT, n_parts, parts_per_split, H, tiles_w, KS: tl.constexpr, NBC: tl.constexpr,
                     BP: tl.constexpr, BY_KEY_ROW: tl.constexpr, BLOCK: tl.constexpr):
    """Program ``(h·(2K - 1) + r, s)``: the sum of d_rpb row ``r`` of head ``h`` over split ``s`` of the
    partials ``(B, H, tiles_w, heads, R, NBC)``, stored in ``OUT[s, h, r]`` in ``OUT``'s dtype. The
    partials are the dq kernel's by query row ``i`` and window row (``R = K``; window row ``a`` is d_rpb
    row ``a + start(i) - i + K - 1``), or the fused backward's by key row and d_rpb row (``BY_KEY_ROW``,
    ``R = 2K - 1``; set where the key row is in the window of query row ``key - r + K - 1``)."""
    R: tl.constexpr = 2 * KS - 1 if BY_KEY_ROW else KS
    heads = tl.num_programs(0) // (2 * KS - 1)
    h = tl.program_id(0) // (2 * KS - 1)
    r = tl.program_id(0) % (2 * KS - 1)
    col = tl.arange(0, BP)
    acc = tl.zeros([BLOCK, BP], tl.float32)
    p_lo = tl.program_id(1) * parts_per_split
    p_hi = tl.minimum(p_lo + parts_per_split, n_parts)
    for p0 in range(p_lo, p_hi, BLOCK):                             # p: (batch, map row, tile column)
        p = p0 + tl.arange(0, BLOCK)
        i = (p // tiles_w) % H
        if BY_KEY_ROW:
            query = i - r + (KS - 1)
            slot = tl.full([BLOCK], r, tl.int32)
            ok = (query >= _query_lo(i, KS)) & (query <= _query_hi(i, H, KS))
        else:
            slot = r - (_window_start(i, H, KS) - i + (KS - 1))
            ok = (slot >= 0) & (slot < KS)
        row = (p.to(tl.int64) * heads + h) * R + slot
        acc += tl.load(PARTS + row[:, None] * NBC + col[None, :],
                       mask=(ok & (p < p_hi))[:, None] & (col < 2 * KS - 1)[None, :], other=0.0)
    out_row = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(OUT + out_row * (2 * KS - 1) + col, tl.sum(acc, 0).to(OUT.dtype.element_ty), mask=col < 2 * KS - 1)


@triton.jit
def _sum_splits_kernel(PARTS, OUT, n, splits, BLOCK: tl.constexpr):
    """``OUT[x] = Σ_s PARTS[s, x]`` for ``PARTS (splits, n)`` (fp32), stored in ``OUT``'s dtype."""
    x = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = x < n
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(splits):
        acc += tl.load(PARTS + s * n + x, mask=ok, other=0.0)
    tl.store(OUT + x, acc.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_prep_kernel(O, DO, DELTA, DQ, sob, son, soh, sow, sdb, sdn, sdh, sdw, heads, H, W, D, n_pixels,
                     DP: tl.constexpr, BLOCK: tl.constexpr, ALIGN: tl.constexpr):
    """For the fused backward, per pixel: ``Δ = rowsum(dO ∘ O)`` (fp32) and a zeroed row of the fp32
    ``dq`` (contiguous); one program per ``BLOCK`` pixels of ``(B, heads, H, W)``, head dim padded to
    ``DP``; strides and head dim multiples of ``ALIGN`` (``_aligned``)."""
    sob, son, soh, sow = _aligned(sob, son, soh, sow, ALIGN)
    sdb, sdn, sdh, sdw = _aligned(sdb, sdn, sdh, sdw, ALIGN)
    D = (D // ALIGN) * ALIGN
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = pix < n_pixels
    j = pix % W
    i = (pix // W) % H
    b = pix // (H * W * heads)
    n = (pix // (H * W)) % heads
    col = tl.arange(0, DP)
    mask = ok[:, None] & (col < D)[None, :]
    o_rows = b.to(tl.int64) * sob + n.to(tl.int64) * son + i * soh + j * sow
    d_rows = b.to(tl.int64) * sdb + n.to(tl.int64) * sdn + i * sdh + j * sdw
    o = tl.load(O + o_rows[:, None] + col[None, :], mask=mask, other=0.0)
    do = tl.load(DO + d_rows[:, None] + col[None, :], mask=mask, other=0.0)
    tl.store(DELTA + pix, tl.sum(do.to(tl.float32) * o.to(tl.float32), 1), mask=ok)
    tl.store(DQ + pix.to(tl.int64)[:, None] * D + col[None, :], tl.zeros([BLOCK, DP], tl.float32), mask=mask)


# --------------------------------------------------------------------------------------------------
# Launch configuration: tiles per (kernel size, head_dim, dtype), narrow autotuning
# --------------------------------------------------------------------------------------------------

class Tile(NamedTuple):
    """A program's work: ``tr`` tiles of ``th`` rows × ``tw`` pixels, ``rows`` partner rows per step, on
    ``num_warps`` warps with ``num_stages`` pipeline stages: key rows (forward, dq) or query chunks
    (dk/dv), scored by one dot; ``rows`` is a power of two.  ``prefetch`` (dk/dv kernel only): the
    next step's loads are issued into registers before the current step is computed.  ``bias_in_dot``
    (forward and dq kernels): the bias enters as the QK dot's accumulator, loaded into registers
    rather than pipelined through shared memory."""

    th: int
    tr: int = 1
    rows: int = 1
    num_warps: int = 4
    num_stages: int = 1
    tw: int = MAX_TW
    prefetch: bool = False
    bias_in_dot: bool = False


def _pow2(x: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(x))


def key_run(tile_width: int, kernel_size: int, width: Optional[int] = None) -> int:
    """Pixels per key row of a query tile ``tile_width`` wide: ``pow2(TW + K - 1)``, or ``pow2(W)`` on a
    map ``width`` ``W`` narrower than that (the tile's windows then span at most the ``W`` columns); also
    the dk/dv kernel's run of query columns per key tile."""
    run = _pow2(tile_width + kernel_size - 1)
    return run if width is None else min(run, _pow2(width))


def tile_run(tile: Tile, kernel_size: int, width: int, dtype: torch.dtype, whole_band: bool = False) -> int:
    """The key run (``RWP``, the dk/dv kernel's ``QWP``) a launch of ``tile`` uses on maps ``width`` wide:
    ``key_run``, but at least 32 for fp32 on 8 or more warps.  ``whole_band`` (the fused backward): a run
    that holds every query column whose window meets the key tile, ``TW + K - 1 + K//2`` at the borders
    (where windows shift inwards).  The floor of 32 is there because Triton's tf32x3 dots only 16 keys
    wide on 8 or more warps fault with an illegal address."""
    run = key_run(tile.tw + (kernel_size // 2 if whole_band else 0), kernel_size, width)
    return max(run, 32) if dtype == torch.float32 and tile.num_warps >= 8 else run


class HeadParts(NamedTuple):
    """A head_dim row as powers of two for ``tl.dot``: ``a`` columns, then ``b`` more (0: one part)."""

    a: int
    b: int


def head_parts(head_dim: int) -> HeadParts:
    """One power of two, or two where that pads less: 36 → 32 + 16 instead of 64 (SegMAN-S's head
    dim at stages 2-3, SegMAN-T's and -L's at stage 3); 20 → 32, as two parts would be 16 + 16."""
    whole = _pow2(head_dim)
    a = whole // 2
    if 16 <= a < head_dim and a + _pow2(head_dim - a) < whole:
        return HeadParts(a, _pow2(head_dim - a))
    return HeadParts(whole, 0)


class Geometry(NamedTuple):
    """The bias table's column offset ``co`` and width ``cw`` per kernel size: bias columns
    ``-(TW-1) .. key_run + K - 2`` of every tile width up to ``MAX_TW``."""

    co: int
    cw: int


def _round4(x: int) -> int:
    """``x`` rounded up to a multiple of 4 (floats: rows that stay 16-byte aligned)."""
    return (x + 3) // 4 * 4


def geometry(kernel_size: int) -> Geometry:
    cw = MAX_TW + key_run(MAX_TW, kernel_size) + kernel_size
    return Geometry(MAX_TW, _round4(cw))  # rows of a multiple of 4 floats keep the copies aligned


def drpb_widths(kernel_size: int) -> dict:
    """The dq kernel's d_rpb row widths: ``BP``, the power of two its gather works in, and ``NBC``,
    the ``2K - 1`` bias columns of a partials row padded to a multiple of 4 floats (vector stores)."""
    nb = 2 * kernel_size - 1
    return dict(BP=_pow2(nb, 1), NBC=_round4(nb))


def candidates(kind: str, kernel_size: int, head_dim: int, dtype: torch.dtype) -> list[Tile]:
    """Tiles tried by the autotuner for one kernel ("fwd", "dq", "dkdv" or the fused backward's "bwd"),
    default first.

    A tile of ``th`` rows walks ``K + th - 1`` partner rows: taller tiles waste more scores but
    share each loaded row among more warps.  The list covers what wins somewhere on SegMAN's stages:

    * 8 warps as well for fp32 with a (padded) head_dim of 64 or more, whose tf32x3 dots (three times
      the operands) spill on 4; only 8 at 128, where 16 warps fault;
    * tiles 8 pixels wide where that halves the key run (K ≤ 9: 16 keys per row instead of 32);
    * 2-4 rows per dot and one tile per program, for small maps (stages 3-4); not at a head_dim of
      128, where those dots spill;
    * loads pipelined 2 (fp32) or 3 steps ahead in the forward and dq kernels, for small maps; on wide
      runs (stage 1) they pay only when the bias enters as the QK dot's accumulator (``bias_in_dot``);
    * in the dk/dv kernel, narrow tiles that load each step's queries a step ahead (``prefetch``);
    * the fused backward in fp32 at a head_dim of 128 keeps one row per dot: two exceed the shared
      memory of a Hopper GPU."""
    dp = sum(head_parts(head_dim))
    warps = 8 if dp >= 128 else 4
    narrow = key_run(8, kernel_size) < key_run(MAX_TW, kernel_size)
    tiles = [Tile(4, 2, 1, warps), Tile(4, 4, 1, warps), Tile(2, 4, 1, warps // 2), Tile(4, 2, 2, warps)]
    if narrow:
        tiles += [Tile(8, 1, 1, warps, tw=8), Tile(8, 2, 1, warps, tw=8), Tile(4, 2, 1, warps // 2, tw=8)]
    if dp < 128:
        tiles += [Tile(2, 4, 2, warps // 2)]
        if narrow:
            tiles += [Tile(8, 1, 2, warps, tw=8), Tile(4, 2, 2, warps // 2, tw=8)]
        depth = 2 if dtype == torch.float32 else 3
        if kind == "fwd":
            tiles += [Tile(4, 2, 4, warps), Tile(4, 1, 2, warps)]
            if narrow:
                tiles += [Tile(8, 1, 4, warps, tw=8), Tile(4, 1, 1, warps // 2, depth, tw=8),
                          Tile(4, 1, 2, warps // 2, depth, tw=8)]
        if kind in ("fwd", "dq"):  # pipelined loads
            tiles += [Tile(4, 2, 1, warps, depth), Tile(4, 2, 2, warps, depth)]
            if narrow:
                tiles += [Tile(4, 2, 2, warps // 2, depth, tw=8)]
        if kind in ("fwd", "dq") and not narrow:  # pipelined, the bias through the dot's accumulator
            tiles += [Tile(4, 2, 1, warps, depth, bias_in_dot=True), Tile(4, 2, 2, warps, depth, bias_in_dot=True)]
        if kind == "dkdv" and narrow:  # loads a step ahead, by hand
            tiles += [Tile(4, 2, 1, warps // 2, tw=8, prefetch=True), Tile(4, 2, 2, warps // 2, tw=8, prefetch=True)]
    if dtype == torch.float32 and 64 <= dp < 128:  # dp 128 runs on 8 warps already; 16 fault
        tiles += [Tile(4, 2, 1, 2 * warps), Tile(8, 1, 1, 2 * warps)]
    if kind == "bwd" and dtype == torch.float32 and dp >= 128:
        tiles = [tile for tile in tiles if tile.rows == 1]
    return tiles


_TUNED: dict = {}
_FORCED: dict = {}
CACHE_FILE = "na_triton_tuning.json"
_STORED: Optional[dict] = None  # the tuning file's entries, read once


def _cache_path() -> str:
    """Where tuning results are kept: ``$SEGMAN_CACHE_DIR`` or ``~/.cache/segman``."""
    root = os.environ.get("SEGMAN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "segman")
    return os.path.join(root, CACHE_FILE)


def _cache_key(key: tuple) -> str:
    """A tuning key as text, with what its result depends on beyond the shapes: GPU and Triton."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return "|".join(map(str, (device, f"triton {triton.__version__}", *key)))


def _tuning_file() -> dict:
    """The tuning file's entries (read on first use; empty if there is none or it is unreadable)."""
    global _STORED
    if _STORED is None:
        path = _cache_path()
        try:
            with open(path) as f:
                _STORED = json.load(f)
        except FileNotFoundError:
            _STORED = {}
        except (OSError, ValueError) as exc:  # unreadable or not JSON: tune again, and rewrite it
            warnings.warn(f"ignoring the neighborhood-attention tuning file {path} ({exc})")
            _STORED = {}
    return _STORED


def _stored(key: tuple):
    """The result tuned for ``key`` by an earlier run on this machine, or None."""
    return _tuning_file().get(_cache_key(key))


def _store(key: tuple, value) -> None:
    """Keeps a tuning result for later runs: the whole file is rewritten and renamed into place, so
    concurrent writers (ranks of one job) never leave a partial file."""
    entries = _tuning_file()
    entries[_cache_key(key)] = value
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home: the result still serves this process
        warnings.warn(f"could not write the neighborhood-attention tuning file {path} ({exc})")


def autotune_enabled() -> bool:
    return os.environ.get("SEGMAN_NA_TRITON_AUTOTUNE", "1") not in ("0", "", "false", "False")


def force_tiles(fwd: Optional[Tile] = None, dq: Optional[Tile] = None, dkdv: Optional[Tile] = None,
                bwd: Optional[Tile] = None) -> None:
    """Pin the tiles of each kernel (tests and benchmarks; ``bwd``: the fused backward's); ``None``
    returns it to autotuning."""
    for kind, tile in (("fwd", fwd), ("dq", dq), ("dkdv", dkdv), ("bwd", bwd)):
        if tile is None:
            _FORCED.pop(kind, None)
        else:
            _FORCED[kind] = Tile(*tile)


def _gpu_ms(fn, calls: int = 10, replays: int = 3) -> float:
    """GPU milliseconds of one ``fn()``: the fastest of ``replays`` replays of a CUDA graph of ``calls``
    calls.  Timing eager calls would add the host's launch work, which at small maps (SegMAN stages
    3-4) is longer than the kernels and made the autotuner's choice there noise."""
    fn()  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads (NCCL) may go on
        for _ in range(calls):
            fn()
    graph.replay()
    best = float("inf")
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / calls)
    return best


def _pick(kind: str, kernel_size: int, head_dim: int, dtype: torch.dtype, width: int, launch) -> Tile:
    """The tile for ``kind``: forced, cached, the default, or the fastest candidate of ``launch``.  Tuned
    per key run on maps ``width`` wide (narrow maps shorten the runs of wide tiles, see ``key_run``)."""
    if kind in _FORCED:
        return _FORCED[kind]
    key = (kind, kernel_size, head_dim, dtype, key_run(MAX_TW, kernel_size, width))
    if key in _TUNED:
        return _TUNED[key]
    tiles = candidates(kind, kernel_size, head_dim, dtype)
    if not autotune_enabled() or len(tiles) == 1:
        _TUNED[key] = tiles[0]
        return tiles[0]
    stored = _stored(("tile", *key))
    if stored is not None and Tile(*stored) in tiles:
        _TUNED[key] = Tile(*stored)
        return _TUNED[key]
    times = []
    for tile in tiles:
        try:
            times.append(_gpu_ms(lambda: launch(tile)))
        except Exception:  # a candidate that does not compile or fit (shared memory) is skipped
            times.append(float("inf"))
    best = tiles[min(range(len(tiles)), key=times.__getitem__)]
    _TUNED[key] = best
    _store(("tile", *key), list(best))
    return best


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # ignored for 16-bit operands
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def _strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


# --------------------------------------------------------------------------------------------------
# Python wrappers
# --------------------------------------------------------------------------------------------------

_COMPILED: dict = {}  # kind -> the last compiled kernel launched (registers, spills: benchmarks/na_gpu.py)


def _table_floats(kernel_size: int) -> int:
    """Floats of one head's unshifted bias table, ``K + 1`` slabs of ``2K × CW`` (``_table_copy`` adds the
    4 of shift room inside the kernels)."""
    return (kernel_size + 1) * 2 * kernel_size * geometry(kernel_size).cw


def table_slabs(table: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The ``(heads, K + 1, 2K, CW)`` view of a ``bias_table`` (its unshifted copy)."""
    geo = geometry(kernel_size)
    return table[:, 0, :_table_floats(kernel_size)].view(table.shape[0], kernel_size + 1, 2 * kernel_size, geo.cw)


def bias_table(rpb: Optional[torch.Tensor], kernel_size: int, device: torch.device) -> torch.Tensor:
    """``(heads, 4, (K + 1)·2K·CW + 4)`` fp32: four shifted copies of the ``(K + 1, 2K, CW)`` table of
    each head (``rpb / ln 2`` inside windows, ``-inf`` outside; zeros and ``-inf`` with one head
    when ``rpb`` is None)."""
    if rpb is None:
        return _mask_table(kernel_size, device)
    geo = geometry(kernel_size)
    copy = _table_floats(kernel_size) + 4
    table = torch.empty((rpb.shape[0], 4, copy), dtype=torch.float32, device=device)
    block = 1024
    _bias_table_kernel[(triton.cdiv(4 * copy, block), rpb.shape[0])](rpb.detach().contiguous(), table, KS=kernel_size,
                                                                     CO=geo.co, CW=geo.cw, BLOCK=block)
    return table


@functools.lru_cache(maxsize=32)
def _mask_table(kernel_size: int, device: torch.device) -> torch.Tensor:
    """The bias table without rpb: the window mask alone.  Cached, so built as a normal tensor even
    under ``torch.inference_mode`` (autograd saves it for the backward of later calls)."""
    with torch.inference_mode(False):
        return bias_table(torch.zeros(1, 2 * kernel_size - 1, 2 * kernel_size - 1, device=device), kernel_size,
                          device)


def _grid(tile: Tile, q: torch.Tensor) -> tuple[int, int]:
    batch, heads, height, width, _ = q.shape
    return triton.cdiv(height, tile.tr * tile.th) * triton.cdiv(width, tile.tw), batch * heads


def _stride_align(*tensors: torch.Tensor) -> int:
    """4 when the head_dim and every stride but the last of ``tensors`` are multiples of 4 elements
    but not all of 16 (the kernels then address rows as vectors, see ``_aligned``), else 1: Triton
    itself specialises arguments that are multiples of 16."""
    sizes = [tensors[0].shape[-1]] + [s for t in tensors for s in t.stride()[:-1]]
    return 4 if all(x % 4 == 0 for x in sizes) and not all(x % 16 == 0 for x in sizes) else 1


def _vector_bias(dtype: torch.dtype) -> bool:
    """Whether the forward and dq kernels read the bias as 16-byte vectors from the aligned table
    copies (one load instruction per 4 scores instead of per score): for 16-bit inputs.  fp32 inputs,
    whose tf32x3 dots already fill the registers, read it per score: the vector path is no faster
    there."""
    return dtype != torch.float32


def tile_constants(tile: Tile, kernel_size: int, head_dim: int, precision: str, align: int) -> dict:
    """The compile-time constants the three kernels share, for ``tile``, a dot ``precision`` and a
    stride alignment ``align`` (``_stride_align``)."""
    geo = geometry(kernel_size)
    return dict(KS=kernel_size, TR=tile.tr, TH=tile.th, TW=tile.tw, ROWS=tile.rows, CO=geo.co, CW=geo.cw,
                **head_args(head_dim), PRECISION=precision, ALIGN=align)


def _launch_args(tile: Tile, kernel_size: int, q: torch.Tensor, *others: torch.Tensor) -> dict:
    """``tile_constants`` for ``q`` and ``others`` (the other strided inputs), with the launch's warps and
    pipeline stages."""
    return dict(**tile_constants(tile, kernel_size, q.shape[-1], _precision(q.dtype), _stride_align(q, *others)),
                num_warps=tile.num_warps, num_stages=tile.num_stages)


def head_args(head_dim: int) -> dict:
    """The kernels' head-dim constants: parts ``DA`` and ``DB`` (a placeholder 16 without ``SPLIT``),
    and ``EVEN_D``: whether the last part is full."""
    parts = head_parts(head_dim)
    return dict(DA=parts.a, DB=parts.b or 16, SPLIT=parts.b > 0, EVEN_D=head_dim == sum(parts))


def _forward(q, k, v, table, kernel_size: int, scale: float):
    batch, heads, height, width, head_dim = q.shape
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, height, width), dtype=torch.float32, device=q.device)

    def launch(tile: Tile):
        _COMPILED["fwd"] = _na2d_fwd_kernel[_grid(tile, q)](
            q, k, v, table, o, lse, *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(o),
            heads, height, width, head_dim, scale * LOG2E, table.shape[0],
            RWP=tile_run(tile, kernel_size, width, q.dtype), VEC_BIAS=_vector_bias(q.dtype),
            BIAS_IN_DOT=tile.bias_in_dot, **_launch_args(tile, kernel_size, q, k, v))

    launch(_pick("fwd", kernel_size, head_dim, q.dtype, width, launch))
    return o, lse


def _backward_dq(q, k, v, table, o, lse, do, kernel_size: int, scale: float, rpb_dtype: Optional[torch.dtype]):
    """dq, Δ = rowsum(dO ∘ O) and d_rpb in ``rpb_dtype`` (None without it: no rpb gradient)."""
    rpb_grad = rpb_dtype is not None
    _, heads, height, width, head_dim = q.shape
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    delta = torch.empty_like(lse)
    widths = drpb_widths(kernel_size)

    def launch(tile: Tile) -> torch.Tensor:
        """Runs the kernel; returns the d_rpb partials, ``(B, H, W / TW, heads, K, NBC)``: every element
        written by the kernel."""
        buf = _drpb_partials(q, tile, kernel_size, kernel_size) if rpb_grad else lse
        _COMPILED["dq"] = _na2d_bwd_dq_kernel[_grid(tile, q)](
            q, k, v, table, o, do, lse, delta, dq, buf,
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(o), *_strides4(do), *_strides4(dq),
            heads, height, width, head_dim, scale * LOG2E, scale, table.shape[0], RPB_GRAD=rpb_grad,
            RWP=tile_run(tile, kernel_size, width, q.dtype), **widths, VEC_BIAS=_vector_bias(q.dtype),
            BIAS_IN_DOT=tile.bias_in_dot, **_launch_args(tile, kernel_size, q, k, v, do))
        return buf

    buf = launch(_pick("dq", kernel_size, head_dim, q.dtype, width, launch))
    return dq, delta, _sum_partials(buf, rpb_dtype, kernel_size, False) if rpb_grad else None


def _drpb_partials(q: torch.Tensor, tile: Tile, kernel_size: int, rows: int) -> torch.Tensor:
    """An fp32 buffer for the d_rpb partials ``(B, H, W / TW, heads, rows, NBC)`` of a launch of ``tile``
    on ``q``; the kernels write every element the sum reads."""
    batch, heads, height, width, _ = q.shape
    return torch.empty((batch, height, triton.cdiv(width, tile.tw), heads, rows, drpb_widths(kernel_size)["NBC"]),
                       dtype=torch.float32, device=q.device)


def _sum_partials(parts: torch.Tensor, dtype: torch.dtype, kernel_size: int, by_key_row: bool) -> torch.Tensor:
    """d_rpb ``(heads, 2K - 1, 2K - 1)`` in ``dtype`` from the partials ``(B, H, W / TW, heads, R, NBC)`` of
    the dq kernel (``R = K``) or the fused backward (``by_key_row``, ``R = 2K - 1``). A map with few
    heads × d_rpb rows (SegMAN-S stage 1: 2·21) splits the partials so that every SM streams some; the
    splits' sums are added by a second small kernel (a fixed order: deterministic).  128 partials per
    step on 4 warps, at least 2 steps per split: wider steps on more warps are slower."""
    batch, height, tiles_w, heads, _, nbc = parts.shape
    nb = 2 * kernel_size - 1
    n_parts = batch * height * tiles_w
    block = 128                                   # partials per step; a split streams at least 2 steps
    splits = max(1, min(triton.cdiv(n_parts, 2 * block), triton.cdiv(4 * _sm_count(parts.device), heads * nb)))
    per_split = triton.cdiv(triton.cdiv(n_parts, splits), block) * block
    splits = triton.cdiv(n_parts, per_split)
    out = torch.empty((heads, nb, nb), dtype=dtype, device=parts.device)
    sums = out if splits == 1 else torch.empty((splits, heads, nb, nb), dtype=torch.float32, device=parts.device)
    _drpb_sum_kernel[(heads * nb, splits)](parts, sums, n_parts, per_split, height, tiles_w, KS=kernel_size,
                                           NBC=nbc, BP=_pow2(nb, 1), BY_KEY_ROW=by_key_row, BLOCK=block,
                                           num_warps=4)
    if splits > 1:
        _sum_splits_kernel[(triton.cdiv(out.numel(), 1024),)](sums, out, out.numel(), splits, BLOCK=1024)
    return out


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    """The GPU's SM count; 1 for the interpreter's CPU tensors."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _backward_dkdv(q, k, v, table, lse, delta, do, kernel_size: int, scale: float):
    batch, heads, height, width, head_dim = q.shape
    dk = torch.empty(q.shape, dtype=k.dtype, device=q.device)
    dv = torch.empty(q.shape, dtype=v.dtype, device=q.device)

    def launch(tile: Tile):
        _COMPILED["dkdv"] = _na2d_bwd_dkdv_kernel[_grid(tile, q)](
            q, k, v, table, do, lse, delta, dk, dv, lse, lse,
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(do),
            heads, height, width, head_dim, scale * LOG2E, scale, table.shape[0],
            QWP=tile_run(tile, kernel_size, width, q.dtype), FUSED=False, RPB_GRAD=False, BP=16, NBC=16,
            PREFETCH=tile.prefetch, **_launch_args(tile, kernel_size, q, k, v, do))

    launch(_pick("dkdv", kernel_size, head_dim, q.dtype, width, launch))
    return dk, dv


def _backward_fused(q, k, v, table, o, lse, do, kernel_size: int, scale: float, rpb_dtype: Optional[torch.dtype]):
    """dq, dk, dv and d_rpb (in ``rpb_dtype``; None without it) from one pass per key tile: the dk/dv
    kernel in its ``FUSED`` mode, after a small kernel that computes Δ and zeroes the fp32 dq."""
    _, heads, height, width, head_dim = q.shape
    rpb_grad = rpb_dtype is not None
    delta = torch.empty_like(lse)
    dq_sum = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    # 1024 elements per program (8 per thread) on 4 warps: larger blocks are no faster; rows are addressed
    # as vectors (ALIGN) where the head_dim and strides allow
    head_pad = triton.next_power_of_2(head_dim)
    block = 1024 // head_pad
    _bwd_prep_kernel[(triton.cdiv(lse.numel(), block),)](o, do, delta, dq_sum, *_strides4(o), *_strides4(do), heads,
                                                           height, width, head_dim, lse.numel(), DP=head_pad,
                                                           BLOCK=block, ALIGN=_stride_align(o, do))
    dk = torch.empty(q.shape, dtype=k.dtype, device=q.device)
    dv = torch.empty(q.shape, dtype=v.dtype, device=q.device)
    widths = drpb_widths(kernel_size)

    def launch(tile: Tile, dq_out: torch.Tensor) -> torch.Tensor:
        """Runs the kernel, adding to ``dq_out``; returns the d_rpb partials ``(B, H, W / TW, heads, 2K - 1,
        NBC)`` (the elements the sum reads are written)."""
        buf = _drpb_partials(q, tile, kernel_size, 2 * kernel_size - 1) if rpb_grad else lse
        _COMPILED["bwd"] = _na2d_bwd_dkdv_kernel[_grid(tile, q)](
            q, k, v, table, do, lse, delta, dk, dv, dq_out, buf,
            *_strides4(q), *_strides4(k), *_strides4(v), *_strides4(do),
            heads, height, width, head_dim, scale * LOG2E, scale, table.shape[0],
            QWP=tile_run(tile, kernel_size, width, q.dtype, whole_band=True), FUSED=True, RPB_GRAD=rpb_grad,
            PREFETCH=tile.prefetch, **widths, **_launch_args(tile, kernel_size, q, k, v, do))
        return buf

    scratch = []  # the autotuner's launches add into a scratch dq, made once (outside its graph captures)

    def tuning_launch(tile: Tile) -> torch.Tensor:
        if not scratch:
            scratch.append(torch.empty_like(dq_sum))
        return launch(tile, scratch[0])

    tile = _pick("bwd", kernel_size, head_dim, q.dtype, width, tuning_launch)
    buf = launch(tile, dq_sum)
    dq = dq_sum if q.dtype == torch.float32 else dq_sum.to(q.dtype)
    return dq, dk, dv, _sum_partials(buf, rpb_dtype, kernel_size, True) if rpb_grad else None


def _backward_split(q, k, v, table, o, lse, do, kernel_size: int, scale: float, rpb_dtype: Optional[torch.dtype]):
    """dq, dk, dv and d_rpb from the dq kernel (per query tile) and the dk/dv kernel (per key tile)."""
    dq, delta, drpb = _backward_dq(q, k, v, table, o, lse, do, kernel_size, scale, rpb_dtype)
    dk, dv = _backward_dkdv(q, k, v, table, lse, delta, do, kernel_size, scale)
    return dq, dk, dv, drpb


BACKWARDS = {"split": _backward_split, "fused": _backward_fused}
_MODES: dict = {}  # (kernel size, head_dim, dtype, key run, rpb gradient) -> the faster backward


def backward_mode(kernel_size: int, head_dim: int, dtype: torch.dtype, width: int, rpb_grad: bool, run) -> str:
    """The backward for these shapes (``run(mode)`` runs one): ``"split"`` when determinism is asked for
    (the fused one sums dq by atomics, in an order that varies from run to run), by torch's deterministic
    algorithms or cuDNN's flag (which ``tools/train.py --deterministic`` sets through mmcv), or without
    autotuning; ``SEGMAN_NA_BACKWARD=split|fused`` forces one; else the faster, timed once per shape
    like the tiles."""
    if torch.are_deterministic_algorithms_enabled() or torch.backends.cudnn.deterministic:
        return "split"
    forced = os.environ.get("SEGMAN_NA_BACKWARD", "")
    if forced:
        if forced not in BACKWARDS:
            raise ValueError(f"SEGMAN_NA_BACKWARD={forced!r}: expected one of {sorted(BACKWARDS)} (or unset)")
        return forced
    if not autotune_enabled():
        return "split"
    key = (kernel_size, head_dim, dtype, key_run(MAX_TW, kernel_size, width), rpb_grad)
    if key not in _MODES:
        stored = _stored(("backward", *key))
        if stored in BACKWARDS:
            _MODES[key] = stored
        else:
            _MODES[key] = min(BACKWARDS, key=lambda mode: _gpu_ms(lambda: run(mode)))
            _store(("backward", *key), _MODES[key])
    return _MODES[key]


def _backward(q, k, v, table, o, lse, do, kernel_size: int, scale: float, rpb_dtype: Optional[torch.dtype]):
    do = last_dim_contiguous(do)
    args = (q, k, v, table, o, lse, do, kernel_size, scale, rpb_dtype)
    mode = backward_mode(kernel_size, q.shape[-1], q.dtype, q.shape[-2], rpb_dtype is not None,
                         lambda m: BACKWARDS[m](*args))
    return BACKWARDS[mode](*args)


DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
MAX_KERNEL_SIZE = 13


@torch.compiler.assume_constant_result
def _capability(device_index: int) -> tuple[int, int]:
    """The CUDA device's compute capability (a constant to torch.compile)."""
    return torch.cuda.get_device_capability(device_index)


def can_run(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor], scale: float) -> Optional[str]:
    """None if these kernels support the validated inputs, else the reason."""
    if not q.is_cuda:
        return f"inputs are on {q.device.type}"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} is not supported (float16, bfloat16, float32)"
    if dilation != 1:
        return f"dilation {dilation} > 1 is not supported"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if kernel_size > MAX_KERNEL_SIZE:
        return f"kernel_size {kernel_size} > {MAX_KERNEL_SIZE}"
    if q.dtype == torch.bfloat16 and _capability(q.device.index) < (8, 0):
        return "bfloat16 needs a GPU of compute capability >= 8.0"
    return None


def forward(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor], scale: float):
    """Inputs that :func:`can_run` accepted in; the output and the softmax's log-sum-exp per query
    ``(B, heads, H, W)`` float32 out."""
    assert dilation == 1, "the triton backend supports dilation 1 only"
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    return _forward(q, k, v, bias_table(rpb, kernel_size, q.device), kernel_size, scale)


def backward(q, k, v, kernel_size: int, dilation: int, rpb: Optional[torch.Tensor], scale: float,
             out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, rpb_grad: bool):
    """``(dq, dk, dv, d_rpb)``; ``d_rpb`` is None unless ``rpb_grad``."""
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    table = bias_table(rpb, kernel_size, q.device)
    return _backward(q, k, v, table, out, lse, dout, kernel_size, scale, rpb.dtype if rpb_grad else None)
