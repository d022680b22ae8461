"""Every Triton kernel compiles for an H100 (sm_90) without a GPU.

``triton.compile`` runs the whole pipeline (front end, layouts, LLVM, ptxas from Triton's wheel) for a
``GPUTarget``; it catches what the interpreter tests (test_triton_interpreter.py) cannot: loop-carried
type changes, layout or shared-memory errors, ptxas failures.  One representative specialisation per
kernel and code path (dtype, optional inputs, tile shapes), with the 16-divisibility hints a real launch
on contiguous tensors gets.  Registers and speed are the GPU benchmarks' business.
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from segman.ops.triton_backend import cross_scan as xs  # noqa: E402
from segman.ops.triton_backend import neighborhood_attention as na  # noqa: E402
from segman.ops.triton_backend import selective_scan as ss  # noqa: E402

FLOAT_SCALARS = {"qk_scale", "scale"}


def compile_sm90(fn, constexprs: dict, pointers: dict, num_warps: int = 4, num_stages: int = 1):
    """Compile ``fn`` for sm_90: ``pointers`` maps argument names to element types ("bf16", "fp32"),
    other non-constexpr arguments are int32 (multiples of 16, as strides of contiguous tensors are)."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        signature, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if name in constexprs:
                signature[name] = "constexpr"
                continue
            if name in pointers:
                signature[name] = "*" + pointers[name]
            else:
                signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
            if signature[name] != "fp32":
                attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v
                                                                for k, v in constexprs.items()}, attrs=attrs)
    except (ImportError, TypeError, AttributeError) as exc:  # another Triton's compile API
        pytest.skip(f"triton {triton.__version__}: cannot build a compile request ({exc})")
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def _na_kernel(kind: str, tile, kernel_size: int, head_dim: int, dtype: str, width: int, align: int):
    """``(kernel, constexprs, pointers)`` of one NA kernel ("fwd", "dq", "dkdv" or the fused backward's
    "bwd") launched with ``tile`` on ``dtype`` inputs ``width`` wide."""
    common = na.tile_constants(tile, kernel_size, head_dim, "tf32x3" if dtype == "fp32" else "tf32", align)
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    run = na.tile_run(tile, kernel_size, width, torch_dtype)
    ptrs = {name: dtype for name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    ptrs.update({name: "fp32" for name in ("TABLE", "LSE", "DELTA", "DRPB")})
    vec = {"VEC_BIAS": dtype != "fp32"}
    if kind == "fwd":
        return na._na2d_fwd_kernel, {**common, **vec, "RWP": run, "BIAS_IN_DOT": tile.bias_in_dot}, ptrs
    if kind == "dq":
        return (na._na2d_bwd_dq_kernel, {**common, **vec, "RWP": run, **na.drpb_widths(kernel_size), "RPB_GRAD": True,
                                         "BIAS_IN_DOT": tile.bias_in_dot}, ptrs)
    if kind == "dkdv":
        return (na._na2d_bwd_dkdv_kernel, {**common, "QWP": run, "FUSED": False, "RPB_GRAD": False, "BP": 16, "NBC": 16,
                                           "PREFETCH": tile.prefetch}, ptrs)
    band = na.tile_run(tile, kernel_size, width, torch_dtype, True)
    return (na._na2d_bwd_dkdv_kernel, {**common, "QWP": band, "FUSED": True, "RPB_GRAD": True,
                                       "PREFETCH": tile.prefetch, **na.drpb_widths(kernel_size)},
            {**ptrs, "DQ": "fp32"})


def _na_cases():
    for dtype, kernel_size, head_dim, tile, width in (("bf16", 11, 32, na.Tile(4, 2, 1, 4), 128),
                                                      ("fp32", 7, 36, na.Tile(4, 2, 2, 8), 64),
                                                      ("bf16", 9, 36, na.Tile(8, 1, 1, 4, tw=8), 64),
                                                      ("bf16", 7, 32, na.Tile(4, 2, 4, 4), 16),  # runs of 16
                                                      ("bf16", 3, 128, na.Tile(2, 4, 1, 4), 64)):
        align = 1 if dtype == "fp32" else 4  # both stride paths
        for kind, name in (("fwd", "fwd"), ("dq", "dq"), ("dkdv", "dkdv"), ("bwd", "bwd-fused")):
            yield (f"na-{name}-{dtype}-k{kernel_size}", *_na_kernel(kind, tile, kernel_size, head_dim, dtype, width,
                                                                     align), tile)
    prefetch = na.Tile(4, 2, 2, 2, tw=8, prefetch=True)  # the dk/dv kernel's loads a step ahead
    yield ("na-dkdv-prefetch-bf16-k7", *_na_kernel("dkdv", prefetch, 7, 36, "bf16", 32, 4), prefetch)
    for dtype in ("bf16", "fp32"):  # the bias as the forward's QK accumulator, pipelined
        bias_in_dot = na.Tile(4, 2, 2, 4, 3 if dtype == "bf16" else 2, bias_in_dot=True)
        for kind in ("fwd", "dq"):
            yield (f"na-{kind}-bias-in-dot-{dtype}-k11", *_na_kernel(kind, bias_in_dot, 11, 32, dtype, 128, 4),
                   bias_in_dot)
    geo = na.geometry(7)
    yield ("na-bias-table-bf16", na._bias_table_kernel, dict(KS=7, CO=geo.co, CW=geo.cw, BLOCK=1024),
           {"RPB": "bf16", "TABLE": "fp32"}, None)
    for by_key_row in (False, True):
        yield (f"na-drpb-sum-{'key' if by_key_row else 'query'}-rows", na._drpb_sum_kernel,
               dict(KS=7, NBC=16, BP=16, BY_KEY_ROW=by_key_row, BLOCK=256), {"PARTS": "fp32", "OUT": "fp32"}, None)
    yield ("na-drpb-sum-splits", na._sum_splits_kernel, dict(BLOCK=1024), {"PARTS": "fp32", "OUT": "bf16"}, None)
    yield ("na-bwd-prep-bf16", na._bwd_prep_kernel, dict(DP=64, BLOCK=16, ALIGN=4),
           {"O": "bf16", "DO": "bf16", "DELTA": "fp32", "DQ": "fp32"}, None)


def _scan_cases():
    for dtype, optional, multi, cross in (("bf16", True, False, False), ("fp32", False, True, True)):
        flags = dict(HAS_D=optional, HAS_BIAS=optional, SOFTPLUS=True, MULTI=multi, CROSS=cross, BLOCK_C=1,
                     BLOCK_T=1024)
        ptrs = {name: dtype for name in ("u_ptr", "dl_ptr", "B_ptr", "C_ptr", "du_ptr", "ddl_ptr")}
        ptrs.update({name: "fp32" for name in ("A_ptr", "D_ptr", "bias_ptr", "y_ptr", "st_ptr", "dy_ptr", "dB_ptr",
                                                "dC_ptr", "dA_ptr", "dD_ptr", "dbias_ptr")})
        yield f"scan-fwd-{dtype}", ss._fwd_kernel, flags, ptrs, None
        yield f"scan-bwd-{dtype}", ss._bwd_kernel, flags, ptrs, None
    for dtype, tile in (("bf16", 64), ("fp32", 32)):
        tiles = dict(TILE=tile)
        yield f"cross-scan-{dtype}", xs._cross_scan_kernel, tiles, {"x_ptr": dtype, "out_ptr": dtype}, None
        yield f"cross-merge-{dtype}", xs._cross_merge_kernel, tiles, {"y_ptr": dtype, "out_ptr": dtype}, None


CASES = list(_na_cases()) + list(_scan_cases())


@pytest.mark.parametrize("name,fn,constexprs,pointers,tile", CASES, ids=[c[0] for c in CASES])
def test_kernel_compiles_for_sm90(name, fn, constexprs, pointers, tile):
    warps, stages = (tile.num_warps, tile.num_stages) if tile is not None else (4, 2)
    kernel = compile_sm90(fn, constexprs, pointers, warps, stages)
    assert "cubin" in kernel.asm and len(kernel.asm["cubin"]) > 0, name


@pytest.mark.parametrize("kind,kernel_size,head_dim", [("bwd", 5, 128), ("fwd", 13, 64), ("dq", 13, 64)])
def test_candidates_fit_an_h100s_shared_memory(kind, kernel_size, head_dim):
    """Every tile the autotuner may try, or that a forced launch may get, fits sm_90's 227 KiB of shared
    memory where its kernel's footprint is largest, in fp32 (tf32x3 operands): the fused backward at
    head_dim 128 (a whole query band per key tile; two rows per dot needed 256 KiB and failed to launch),
    and the pipelined forward and dq candidates (several stages of key rows) at the largest head_dim they
    are tried at.  One-stage forward and dq tiles hold a few key rows only and are left out."""
    for tile in na.candidates(kind, kernel_size, head_dim, torch.float32):
        if kind != "bwd" and tile.num_stages == 1:
            continue
        fn, constexprs, ptrs = _na_kernel(kind, tile, kernel_size, head_dim, "fp32", 64, 4)
        kernel = compile_sm90(fn, constexprs, ptrs, tile.num_warps, tile.num_stages)
        assert kernel.metadata.shared <= 227 * 1024, (tile, kernel.metadata.shared)
