"""Triton selective scan (docs/model.md §4.3): forward and backward, tuned for d_state N = 1.

What it computes, per batch ``b`` and channel ``c`` of group ``g`` (the torch backend is the
reference, ``segman/ops/torch_backend/selective_scan.py``)::

    dt_t = softplus(delta[b, c, t] + delta_bias[c])      # ~ read delta once            (2-4 B)
    h_t  = exp(dt_t A[c]) h_{t-1} + dt_t B[b, g, t] u[b, c, t]   # read u once           (2-4 B)
    y_t  = C[b, g, t] h_t + D[c] u[b, c, t]              # write y once (fp32)           (4 B)

Memory traffic is the whole cost: B and C are shared by the ``Dg`` channels of a group, so per
element the forward moves 12 bytes (fp32 inputs) or 8 bytes (bf16/fp16), and the backward reads
u, delta, dy and writes du, ddelta (20 or 12 bytes).  The kernels therefore do one pass over the
data each:

* A program owns ``BLOCK_C`` channels of one (batch, group) and walks the sequence in chunks of
  ``BLOCK_T`` steps.  Inside a chunk the recurrence is a ``tl.associative_scan`` over
  ``(decay, drive)`` pairs; the state is carried from chunk to chunk in registers.
* The forward also stores the state entering each chunk (``Bt*C*L/BLOCK_T`` floats, 0.1 % of the
  traffic).  The backward walks the chunks from last to first, recomputes ``h`` inside each chunk
  from that state, and runs the adjoint recurrence ``dh_t = C_t dy_t + exp(dt_{t+1} A) dh_{t+1}``
  as a reverse scan.  Nothing of size ``L`` is saved between forward and backward.
* ``dA``, ``dD`` and ``ddelta_bias`` are reduced inside each program and written per batch (a tiny
  torch sum follows); ``dB`` and ``dC`` are summed over the program's channels and added to an
  fp32 buffer with relaxed atomics (the buffer is ``Bt*G*L`` floats: it stays in L2).
* d_state N > 1 (not used by SegMAN) makes one pass per state; ``y`` (and, in backward, fp32
  ``du`` / ``ddelta``) are accumulated in place by the program that owns those rows, so the
  result stays deterministic.  This moves ``N`` times the bytes; the CUDA backend is faster there.

The adjoint scan needs ``exp(dt_{t+1} A)`` at step ``t`` (a shift by one), which a scan cannot
read directly; it carries the segment's first decay instead: an element is
``(first decay F, coefficient P, value V)`` meaning ``dh_start = V + P * (F_next dh_next)``, and
two segments combine as ``(F_L, P_L F_R P_R, V_L + P_L F_R V_R)``.  Likewise the recomputed
forward scan also carries the map to the state entering each step, so ``h_{t-1}`` is exact (the
shortcut ``h_t - dt_t B_t u_t`` loses precision when the step is large).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._layout import last_dim_contiguous

LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------

@triton.jit
def _scan_combine(a_l, h_l, a_r, h_r):
    """Compose ``h -> a_l h + h_l`` (earlier) with ``h -> a_r h + h_r`` (later)."""
    return a_l * a_r, a_r * h_l + h_r


@triton.jit
def _scan_prev_combine(a_l, h_l, ap_l, hp_l, a_r, h_r, ap_r, hp_r):
    """``_scan_combine`` plus the map to the state *entering* the last step, ``h -> ap h + hp``
    (an element is ``(a, b, 1, 0)``): gives ``h_{t-1}`` exactly, without a shift or a division."""
    return a_l * a_r, a_r * h_l + h_r, ap_r * a_l, ap_r * h_l + hp_r


@triton.jit
def _adjoint_combine(f_r, p_r, v_r, f_l, p_l, v_l):
    """Reverse scan (Triton passes the accumulated later segment first): see the module docstring."""
    pf = p_l * f_r
    return f_l, pf * p_r, v_l + pf * v_r


@triton.jit
def _step_size(raw, SOFTPLUS: tl.constexpr):
    """softplus (threshold 20) or the identity, in fp32, and its derivative.

    softplus(x) = max(x, 0) + log1p(z) with z = exp(-|x|) in (0, 1]; log1p(z) = 2 atanh(s),
    s = z / (2 + z) <= 1/3, as an odd series to s^13 (relative error < 4e-7 in fp32).  Above 20
    this equals x in fp32, softplus's threshold, so no branch is needed.
    """
    if SOFTPLUS:
        z = tl.exp(-tl.abs(raw))
        s = z / (2.0 + z)
        s2 = s * s
        p = s2 * (1.0 / 13.0) + 1.0 / 11.0
        p = p * s2 + 1.0 / 9.0
        p = p * s2 + 1.0 / 7.0
        p = p * s2 + 1.0 / 5.0
        p = p * s2 + 1.0 / 3.0
        p = p * s2 + 1.0
        dt = tl.maximum(raw, 0.0) + 2.0 * s * p
        dstep = tl.where(raw >= 0.0, 1.0, z) / (1.0 + z)
    else:
        dt = raw
        dstep = tl.full(raw.shape, 1.0, tl.float32)
    return dt, dstep


@triton.jit
def _cross_position(t, g, length, height, width):
    """Row-major pixel index of step ``t`` of scan direction ``g`` (docs/model.md §4.2)."""
    tt = tl.where(g >= 2, length - 1 - t, t)
    return tl.where(g % 2 == 1, (tt % height) * width + tt // height, tt)


@triton.jit
def _program_channels(D_ptr, bias_ptr, groups, dg, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """The rows of this program: batch ``b`` (int64), group ``g``, channels ``cin`` of the group and
    ``ch`` overall ``[BLOCK_C]`` (real where ``cmask``), with their delta_bias and D (fp32; zeros
    when absent)."""
    pid = tl.program_id(0)
    n_cb = tl.cdiv(dg, BLOCK_C)
    bg = pid // n_cb
    g = bg % groups
    b = (bg // groups).to(tl.int64)
    cin = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cin < dg
    ch = (g * dg + cin).to(tl.int64)
    bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
    return b, g, cin, cmask, ch, bias, Dv


@triton.jit
def _fwd_kernel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, st_ptr,
                groups, dg, n_state, length, n_chunks, height, width,
                su_b, su_c, sd_b, sd_c, sB_b, sB_g, sB_n, sC_b, sC_g, sC_n,
                HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, MULTI: tl.constexpr,
                CROSS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    b, g, cin, cmask, ch, bias, Dv = _program_channels(D_ptr, bias_ptr, groups, dg, HAS_D, HAS_BIAS, BLOCK_C)
    row = b * groups * dg + ch                              # output row of each channel
    d_row = dl_ptr + b * sd_b + ch * sd_c
    if CROSS:  # u is the (Bt, Dg, H, W) map and y the merged (Bt, Dg, L) output (docs/model.md §4.2)
        u_row = u_ptr + (b * dg + cin) * length
        y_row = y_ptr + (b * dg + cin) * length
    else:
        u_row = u_ptr + b * su_b + ch * su_c
        y_row = y_ptr + row * length
    offs = tl.arange(0, BLOCK_T)
    # One pass over the sequence per state; with several states (MULTI) y is accumulated in place
    # (the program owns its rows, so the sum is deterministic).
    for n in range(n_state):
        A2 = tl.load(A_ptr + ch * n_state + n, mask=cmask, other=0.0).to(tl.float32) * 1.4426950408889634
        B_row = B_ptr + b * sB_b + g * sB_g + n * sB_n
        C_row = C_ptr + b * sC_b + g * sC_g + n * sC_n
        st_row = st_ptr + (row * n_state + n) * n_chunks
        carry = tl.zeros([BLOCK_C], dtype=tl.float32)
        for i in range(n_chunks):
            t = i * BLOCK_T + offs
            tmask = t < length
            m2 = cmask[:, None] & tmask[None, :]
            tl.store(st_row + i, carry, mask=cmask)         # state entering chunk i (for backward)
            if CROSS:
                pos = _cross_position(t, g, length, height, width)
            else:
                pos = t
            u = tl.load(u_row[:, None] + pos[None, :], mask=m2, other=0.0).to(tl.float32)
            raw = tl.load(d_row[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32) + bias[:, None]
            Bv = tl.load(B_row + t, mask=tmask, other=0.0).to(tl.float32)
            Cv = tl.load(C_row + t, mask=tmask, other=0.0).to(tl.float32)
            dt, dstep = _step_size(raw, SOFTPLUS)
            a = tl.where(m2, tl.exp2(dt * A2[:, None]), 1.0)
            bv = dt * u * Bv[None, :]
            pa, ph = tl.associative_scan((a, bv), 1, _scan_combine)
            h = ph + pa * carry[:, None]
            carry = tl.sum(tl.where(offs[None, :] == BLOCK_T - 1, h, 0.0), 1)
            y = h * Cv[None, :]
            if HAS_D:
                y += tl.where(n == 0, Dv, 0.0)[:, None] * u
            if CROSS:  # four directions meet in one merged pixel
                tl.atomic_add(y_row[:, None] + pos[None, :], y, mask=m2, sem="relaxed")
            else:
                y_ptrs = y_row[:, None] + t[None, :]
                if MULTI:
                    y += tl.load(y_ptrs, mask=m2 & (n > 0), other=0.0)
                tl.store(y_ptrs, y, mask=m2)


@triton.jit
def _bwd_kernel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, st_ptr, dy_ptr,
                du_ptr, ddl_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
                groups, dg, n_state, length, n_chunks, height, width,
                su_b, su_c, sd_b, sd_c, sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, sy_b, sy_c,
                HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, MULTI: tl.constexpr,
                CROSS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    b, g, cin, cmask, ch, bias, Dv = _program_channels(D_ptr, bias_ptr, groups, dg, HAS_D, HAS_BIAS, BLOCK_C)
    row = b * groups * dg + ch
    d_row = dl_ptr + b * sd_b + ch * sd_c
    ddl_row = ddl_ptr + row * length
    if CROSS:  # u / du: (Bt, Dg, H, W) map and its fp32 gradient; dy: merged (Bt, Dg, L)
        u_row = u_ptr + (b * dg + cin) * length
        du_row = du_ptr + (b * dg + cin) * length
        dy_row = dy_ptr + b * sy_b + cin * sy_c
    else:
        u_row = u_ptr + b * su_b + ch * su_c
        du_row = du_ptr + row * length
        dy_row = dy_ptr + b * sy_b + ch * sy_c
    offs = tl.arange(0, BLOCK_T)
    acc_dD = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
    acc_db = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
    for n in range(n_state):
        A = tl.load(A_ptr + ch * n_state + n, mask=cmask, other=0.0).to(tl.float32)
        A2 = A * 1.4426950408889634
        B_row = B_ptr + b * sB_b + g * sB_g + n * sB_n
        C_row = C_ptr + b * sC_b + g * sC_g + n * sC_n
        gl_row = ((b * groups + g) * n_state + n) * length   # dB / dC buffers: (Bt, G, N, L) fp32
        st_row = st_ptr + (row * n_state + n) * n_chunks
        q = tl.zeros([BLOCK_C], dtype=tl.float32)           # exp(dt_s A) dh_s at the next chunk's start
        acc_dA = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
        for j in range(n_chunks):
            i = n_chunks - 1 - j
            t = i * BLOCK_T + offs
            tmask = t < length
            m2 = cmask[:, None] & tmask[None, :]
            h0 = tl.load(st_row + i, mask=cmask, other=0.0)
            if CROSS:
                pos = _cross_position(t, g, length, height, width)
            else:
                pos = t
            u = tl.load(u_row[:, None] + pos[None, :], mask=m2, other=0.0).to(tl.float32)
            raw = tl.load(d_row[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32) + bias[:, None]
            dy = tl.load(dy_row[:, None] + pos[None, :], mask=m2, other=0.0).to(tl.float32)
            Bv = tl.load(B_row + t, mask=tmask, other=0.0).to(tl.float32)
            Cv = tl.load(C_row + t, mask=tmask, other=0.0).to(tl.float32)
            dt, dstep = _step_size(raw, SOFTPLUS)
            a = tl.where(m2, tl.exp2(dt * A2[:, None]), 1.0)
            bv = dt * u * Bv[None, :]
            ones = tl.full([BLOCK_C, BLOCK_T], 1.0, tl.float32)
            zeros = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
            pa, ph, pap, php = tl.associative_scan((a, bv, ones, zeros), 1, _scan_prev_combine)
            h = ph + pa * h0[:, None]
            hb = a * (php + pap * h0[:, None])               # exp(dt_t A) h_{t-1}
            _, p, v = tl.associative_scan((a, ones, dy * Cv[None, :]), 1, _adjoint_combine, reverse=True)
            dh = v + p * q[:, None]
            q = tl.sum(tl.where(offs[None, :] == 0, a * dh, 0.0), 1)
            dhdt = dh * dt
            du = dhdt * Bv[None, :]
            if HAS_D:
                first = n == 0
                du += tl.where(first, Dv, 0.0)[:, None] * dy
                acc_dD += tl.where(first, dy * u, 0.0)
            ddt = dh * (A[:, None] * hb + Bv[None, :] * u)
            acc_dA += dhdt * hb
            ddt = ddt * dstep
            if HAS_BIAS:
                acc_db += tl.where(m2, ddt, 0.0)
            ddl_ptrs = ddl_row[:, None] + t[None, :]
            if MULTI:  # fp32 buffers owned by this program: accumulate over the states in place
                ddt += tl.load(ddl_ptrs, mask=m2 & (n > 0), other=0.0)
            tl.store(ddl_ptrs, ddt.to(ddl_ptr.dtype.element_ty), mask=m2)
            if CROSS:  # the four directions' gradients meet in one pixel of the fp32 dx
                tl.atomic_add(du_row[:, None] + pos[None, :], du, mask=m2, sem="relaxed")
            else:
                du_ptrs = du_row[:, None] + t[None, :]
                if MULTI:
                    du += tl.load(du_ptrs, mask=m2 & (n > 0), other=0.0)
                tl.store(du_ptrs, du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.atomic_add(dB_ptr + gl_row + t, tl.sum(dhdt * u, 0), mask=tmask, sem="relaxed")
            tl.atomic_add(dC_ptr + gl_row + t, tl.sum(dy * h, 0), mask=tmask, sem="relaxed")
        tl.store(dA_ptr + row * n_state + n, tl.sum(acc_dA, 1), mask=cmask)
    if HAS_D:
        tl.store(dD_ptr + row, tl.sum(acc_dD, 1), mask=cmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + row, tl.sum(acc_db, 1), mask=cmask)


# --------------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------------

# BLOCK_T (shared by forward and backward: the saved states are per chunk) and
# (BLOCK_C, num_warps) per direction; tuned on an H100 with benchmarks/scan_gpu.py (``--sweep``).
# ``CONFIG`` may be changed at run time (the benchmark does) and applies to new calls.
CONFIG = {"block_t": 1024, "fwd": (1, 4), "bwd": (1, 4)}


def _config(kind: str, dg: int, length: int) -> tuple[int, int, int]:
    block_c, warps = CONFIG[kind]
    block_t = min(CONFIG["block_t"], max(16, triton.next_power_of_2(length)))
    block_c = min(block_c, triton.next_power_of_2(dg))
    return block_c, block_t, warps


# --------------------------------------------------------------------------------------------------
# Launchers (segman.ops.library registers them as custom ops with autograd)
# --------------------------------------------------------------------------------------------------

def _forward(u, delta, A, B, C, D, delta_bias, softplus: bool, hw: Optional[tuple[int, int]] = None):
    """Scan; with ``hw = (H, W)``, ``u`` is the contiguous ``(Bt, Dg, H, W)`` map read in the four
    cross-scan orders and the output is merged to ``(Bt, Dg, H*W)`` (the fused SS2D step)."""
    bt, channels, length = delta.shape
    groups, n_state = B.shape[1], B.shape[2]
    dg = channels // groups
    block_c, block_t, warps = _config("fwd", dg, length)
    n_chunks = triton.cdiv(length, block_t)
    if hw is None:
        y = torch.empty(bt, channels, length, device=u.device, dtype=torch.float32)
    else:
        y = torch.zeros(bt, dg, length, device=u.device, dtype=torch.float32)
    states = torch.empty(bt, channels, n_state, n_chunks, device=u.device, dtype=torch.float32)
    if y.numel() == 0:
        return y, states, block_t
    grid = (bt * groups * triton.cdiv(dg, block_c),)
    height, width = hw if hw is not None else (1, length)
    _fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, y, states,
        groups, dg, n_state, length, n_chunks, height, width,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, MULTI=n_state > 1,
        CROSS=hw is not None, BLOCK_C=block_c, BLOCK_T=block_t, num_warps=warps)
    return y, states, block_t


def _backward(u, delta, A, B, C, D, delta_bias, states, dy, softplus: bool, fwd_block_t: int,
              hw: Optional[tuple[int, int]] = None):
    bt, channels, length = delta.shape
    groups, n_state = B.shape[1], B.shape[2]
    dg = channels // groups
    block_c, _, warps = _config("bwd", dg, length)
    block_t = fwd_block_t  # the saved states are per forward chunk
    n_chunks = states.shape[-1]
    multi = n_state > 1  # du / ddelta are summed over the states in fp32, then rounded
    if hw is None:
        du = torch.empty(bt, channels, length, device=u.device, dtype=torch.float32 if multi else u.dtype)
    else:  # dx of the (Bt, Dg, H, W) map, accumulated over the four directions in fp32
        du = torch.zeros(bt, dg, length, device=u.device, dtype=torch.float32)
    ddelta = torch.empty(bt, channels, length, device=u.device, dtype=torch.float32 if multi else delta.dtype)
    dB = torch.zeros(bt, groups, n_state, length, device=u.device, dtype=torch.float32)
    dC = torch.zeros(bt, groups, n_state, length, device=u.device, dtype=torch.float32)
    dA = torch.zeros(bt, channels, n_state, device=u.device, dtype=torch.float32)
    dD = torch.zeros(bt, channels, device=u.device, dtype=torch.float32)
    dbias = torch.zeros(bt, channels, device=u.device, dtype=torch.float32)
    if du.numel():
        grid = (bt * groups * triton.cdiv(dg, block_c),)
        _bwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A,
            states, dy, du, ddelta, dB, dC, dA, dD, dbias,
            groups, dg, n_state, length, n_chunks, *(hw if hw is not None else (1, length)),
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
            B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
            dy.stride(0), dy.stride(1),
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, MULTI=multi,
            CROSS=hw is not None, BLOCK_C=block_c, BLOCK_T=block_t, num_warps=warps)
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0), dB, dC,
            dD.sum(0) if D is not None else None, dbias.sum(0) if delta_bias is not None else None)


def _prepare(u, delta, A, B, C, D, delta_bias, cross: bool):
    """The inputs as the kernels read them: the scanned dims contiguous (the whole map when ``cross``)."""
    u = u.contiguous() if cross else last_dim_contiguous(u)
    delta, B, C = (last_dim_contiguous(t) for t in (delta, B, C))
    return (u, delta, A.contiguous(), B, C, D.contiguous() if D is not None else None,
            delta_bias.contiguous() if delta_bias is not None else None)


def states_meta(u, A, B, C) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of the chunk states that :func:`forward` returns: ``(Bt, G*Dg, N, chunks)``."""
    (bt, groups, n_state, length), channels = B.shape, A.shape[0]
    _, block_t, _ = _config("fwd", channels // groups, length)
    return (bt, channels, n_state, triton.cdiv(length, block_t)), torch.float32


def forward(u, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            delta_softplus: bool, hw: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated inputs in (see ``segman.ops.selective_scan``); ``(Bt, G*Dg, L)`` float32 and the chunk
    states out.  With ``hw = (H, W)`` the fused SS2D step instead (see :func:`_forward`)."""
    y, states, _ = _forward(*_prepare(u, delta, A, B, C, D, delta_bias, hw is not None), delta_softplus, hw)
    return y, states


def backward(u, delta, A, B, C, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
             states: torch.Tensor, dy: torch.Tensor, hw: Optional[tuple[int, int]] = None):
    """``(du, ddelta, dA, dB, dC, dD, d_delta_bias)`` in the inputs' dtypes (None for absent inputs)."""
    u, delta, A, B, C, D, delta_bias = _prepare(u, delta, A, B, C, D, delta_bias, hw is not None)
    length = delta.shape[-1]
    _, block_t, _ = _config("fwd", delta.shape[1] // B.shape[1], length)  # the chunks of the saved states
    du, ddelta, dA, dB, dC, dD, dbias = _backward(u, delta, A, B, C, D, delta_bias, states,
                                                  last_dim_contiguous(dy), delta_softplus, block_t, hw)
    return (du.view(u.shape).to(u.dtype), ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.to(D.dtype) if dD is not None else None,
            dbias.to(delta_bias.dtype) if dbias is not None else None)


def can_run(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True) -> Optional[str]:
    """None if this backend supports the inputs, else the reason."""
    if u.device.type != "cuda":
        return f"inputs are on {u.device.type}"
    if any(t is not None and t.dtype == torch.float64 for t in (u, A, B, C, D, delta_bias)):
        return "float64 is not supported (float32/float16/bfloat16 only)"
    return None
