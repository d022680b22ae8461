"""GPU timings of 2-D neighborhood attention with RPB at SegMAN-S training shapes (512×512 crops).

Shapes (batch 16, the four encoder stages): stage 1: 2 heads × 32, 128², K 11; stage 2: 4 × 36, 64²,
K 9; stage 3: 8 × 36, 32², K 7; stage 4: 16 × 32, 16², K 7.  Each in fp32 and bf16, forward and
forward+backward (gradients of q, k, v and of a learnable rpb), for

* ``triton``: ``segman.ops`` triton backend (autotuned tiles and backward path, printed below the
  table); ``triton-split`` / ``triton-fused``: the same with that backward path forced (optional);
* ``torch``: the reference backend (vectorised gathers);
* ``flex``: ``torch.nn.attention.flex_attention`` compiled, with a neighborhood block mask and an
  RPB ``score_mod`` reading a learnable bias: the baseline (only when importable);
* ``flash-dense`` (optional): FlashAttention-2 (torch SDPA's flash kernel, 16-bit only) over every
  pixel of the map, with no window and no bias.  It is not neighborhood attention; it is a speed
  reference for ordinary dense attention over the same tokens (at stage 4, 256 per batch and head);
* ``copy`` (optional): a device-to-device copy of each pass's floor bytes, replayed from a CUDA graph
  like the kernels (its eager columns repeat the replay): what the floor's own bytes take at this
  size, ramp-up and tail included.

The floor is the time to move the bytes that must move once (forward: q, k, v, rpb read and the
output written; forward+backward adds q, k, v, o, dO, rpb read and dq, dk, dv, d_rpb written) at
the device-to-device copy bandwidth measured in the same run (bytes read + written per second).
Three tables (``gpu_timing``; L2 flushed before every call): eager calls, which include each call's
host work (Python, launches, the bias table) and at stages 3-4 are mostly that; each pass replayed
from a CUDA graph, between CUDA events, which adds the graph launch's latency (about 4 µs); and the
GPU time the targets are judged on: the replay from its first kernel's start to its last one's end
(CUPTI), the way the copy bandwidth is measured too.  Rows print as each shape finishes, with
triton's relative error against the torch reference.

The tables and the autotuner's picks are printed and written to ``benchmarks/results/na_gpu.md``
(overwritten; ``--no-write`` prints only).

Usage: PYTHONPATH=. python benchmarks/na_gpu.py
       [--providers triton,torch,flex[,triton-split,triton-fused,flash-dense,copy]]
       [--dtypes fp32,bf16] [--no-write]
       [--stages 1,2,3,4] [--sweep]   (--sweep times candidate tiles of each triton kernel instead)
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional
from unittest import mock

import torch

from gpu_timing import bench, copy_bandwidth, graph_bench, same_size_copy
from report import environment, write_results
from segman.ops import neighborhood_attention_2d
from segman.ops.triton_backend import neighborhood_attention as tb

STAGES = {  # name: (heads, head_dim, map side, kernel size)
    1: (2, 32, 128, 11),
    2: (4, 36, 64, 9),
    3: (8, 36, 32, 7),
    4: (16, 32, 16, 7),
}
BATCH = 16
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(stage: int, dtype: torch.dtype, seed: int = 0):
    heads, head_dim, side, kernel_size = STAGES[stage]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (BATCH, heads, side, side, head_dim)
    q, k, v = (torch.randn(shape, generator=gen, device="cuda", dtype=dtype).requires_grad_() for _ in range(3))
    n = 2 * kernel_size - 1
    rpb = (torch.randn(heads, n, n, generator=gen, device="cuda") * 0.5).requires_grad_()
    return q, k, v, rpb, kernel_size, head_dim ** -0.5


def floor_bytes(q: torch.Tensor, rpb: torch.Tensor) -> tuple[int, int]:
    act, bias = q.numel() * q.element_size(), rpb.numel() * rpb.element_size()
    fwd = 4 * act + bias                       # q, k, v, rpb in; out
    return fwd, fwd + 8 * act + 2 * bias       # + q, k, v, o, dO, rpb in; dq, dk, dv, d_rpb out


def flex_fn(side: int, kernel_size: int, heads: int) -> Optional[Callable]:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    r = kernel_size // 2
    nb = 2 * kernel_size - 1
    for name in ("recompile_limit", "cache_size_limit"):  # one compile per stage/dtype/grad mode
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    compiled = torch.compile(flex_attention, dynamic=False)

    def start(x):
        return torch.clamp(x - r, 0, side - kernel_size)

    def mask_mod(b, h, q_idx, kv_idx):
        qi, qj, ki, kj = q_idx // side, q_idx % side, kv_idx // side, kv_idx % side
        si, sj = start(qi), start(qj)
        return (ki >= si) & (ki < si + kernel_size) & (kj >= sj) & (kj < sj + kernel_size)

    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=side * side, KV_LEN=side * side, device="cuda")

    def run(q, k, v, rpb, scale):
        def score_mod(score, b, h, q_idx, kv_idx):
            qi, qj, ki, kj = q_idx // side, q_idx % side, kv_idx // side, kv_idx % side
            # clamped: outside the window the block mask drops the score anyway
            di = torch.clamp(ki - qi + kernel_size - 1, 0, nb - 1)
            dj = torch.clamp(kj - qj + kernel_size - 1, 0, nb - 1)
            return score + rpb[h, di, dj]

        flat = [t.flatten(2, 3) for t in (q, k, v)]
        out = compiled(*flat, score_mod=score_mod, block_mask=block_mask, scale=scale)
        return out.unflatten(2, (side, side))

    return run


def flash_dense_fn(side: int) -> Callable:
    """Dense attention over all ``side²`` pixels through SDPA's flash kernel (rpb unused)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v, rpb, scale):
        flat = [t.flatten(2, 3) for t in (q, k, v)]
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = torch.nn.functional.scaled_dot_product_attention(*flat, scale=scale)
        return out.unflatten(2, (side, side))

    return run


def provider_fn(name: str, stage: int):
    heads, _, side, kernel_size = STAGES[stage]
    if name == "flex":
        return flex_fn(side, kernel_size, heads)
    if name == "flash-dense":
        return flash_dense_fn(side)
    backend = "triton" if name.startswith("triton") else name

    def run(q, k, v, rpb, scale):
        return neighborhood_attention_2d(q, k, v, kernel_size, rpb=rpb, scale=scale, backend=backend)

    return run


def provider_env(name: str) -> dict:
    """Environment a provider is timed under: ``triton-split`` / ``triton-fused`` force that backward."""
    return {"SEGMAN_NA_BACKWARD": name.split("-", 1)[1]} if name.startswith("triton-") else {}


def time_provider(fn, inputs) -> tuple[tuple[float, float], ...]:
    """ms of (forward, forward+backward) three ways, one pair per table of ``table``: from eager calls;
    replayed from a CUDA graph, between CUDA events; and the replay's GPU time, first kernel to last
    (``gpu_timing``)."""
    q, k, v, rpb, _, scale = inputs
    leaves = [q, k, v, rpb]
    gout = torch.randn_like(q)

    def fwd():
        return fn(q, k, v, rpb, scale)

    def fwd_bwd():
        torch.autograd.grad(fwd(), leaves, gout, allow_unused=True)  # flash-dense: no rpb

    fwd_bwd()  # compile and autotune outside the timings (do_bench sizes its loop from the first calls)
    torch.cuda.synchronize()
    with torch.no_grad():
        fwd_eager, fwd_graph = bench(fwd), graph_bench(fwd)
    all_graph = graph_bench(fwd_bwd)
    return ((fwd_eager, bench(fwd_bwd)), (fwd_graph.replay, all_graph.replay),
            (fwd_graph.kernels, all_graph.kernels))


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _ms(x: Optional[float]) -> str:
    return f"{x:.3f}" if x is not None else "-"


def _ratio(a: Optional[float], b: Optional[float], digits: int) -> str:
    return f"{a / b:.{digits}f}" if a and b else "-"


def table(args) -> None:
    env = environment()
    bw = copy_bandwidth()
    print(f"{env}; copy bandwidth {bw / 1e9:.2f} TB/s (read + write)", flush=True)
    providers = [p for p in args.providers if p != "flex"] + (["flex"] if "flex" in args.providers else [])
    columns = "".join(f" {p} ms |" for p in providers)
    header = f"| stage | dtype | pass |{columns} floor ms | triton/floor | flex/triton |"
    tables = {"Eager calls (host work included)": [],
              "Replayed from a CUDA graph, between CUDA events (the graph launch's latency included)": [],
              "GPU time: replayed from a CUDA graph, first kernel's start to last kernel's end (CUPTI)": []}
    print(f"rows as each shape finishes (eager, replay, GPU time): {header} triton err vs torch |", flush=True)
    for stage in args.stages:
        for dname in args.dtypes:
            inputs = make_inputs(stage, DTYPES[dname])
            q, k, v, rpb, kernel_size, scale = inputs
            fwd_bytes, all_bytes = floor_bytes(q, rpb)
            times, err = {}, float("nan")
            for name in providers:
                if name == "copy":
                    fwd_copy, all_copy = same_size_copy(fwd_bytes), same_size_copy(all_bytes)
                    replay = (fwd_copy.replay, all_copy.replay)  # also in the eager table
                    times[name] = (replay, replay, (fwd_copy.kernels, all_copy.kernels))
                    continue
                fn = provider_fn(name, stage)
                if fn is None:
                    continue
                try:
                    with mock.patch.dict(os.environ, provider_env(name)):
                        times[name] = time_provider(fn, inputs)
                except Exception as exc:  # a rival that cannot run this shape is reported, not fatal
                    print(f"  {name} stage {stage} {dname}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                torch.cuda.empty_cache()
            if "triton" in args.providers:
                with torch.no_grad():
                    out = provider_fn("triton", stage)(q, k, v, rpb, scale)
                    ref = provider_fn("torch", stage)(q, k, v, rpb, scale)
                err = rel_err(out, ref)
            for column, rows in enumerate(tables.values()):
                for i, (pname, nbytes) in enumerate((("fwd", fwd_bytes), ("fwd+bwd", all_bytes))):
                    floor = nbytes / bw
                    t = {name: ts[column][i] for name, ts in times.items()}
                    tri, flex = t.get("triton"), t.get("flex")
                    cells = "".join(f" {_ms(t.get(p))} |" for p in providers)
                    rows.append(f"| {stage} | {dname} | {pname} |{cells} {floor:.3f} | "
                                f"{_ratio(tri, floor, 2)} | {_ratio(flex, tri, 1)} |")
                    print(f"{rows[-1]} {err:.1e} |", flush=True)
            print(f"  triton picked: {_picked(kernel_size, q.shape[-1], q.dtype)}", flush=True)
    out = ["# Neighborhood attention with RPB (`benchmarks/na_gpu.py`)", "",
           f"{env}; copy bandwidth {bw / 1e9:.2f} TB/s (read + write); SegMAN-S training shapes, batch 16; "
           f"stages {','.join(map(str, args.stages))}, {', '.join(args.dtypes)}; ms, L2 flushed before each call."]
    for title, rows in reversed(tables.items()):
        out += ["", f"## {title}", "", header, "|---" * (header.count("|") - 1) + "|", *rows]
    out += ["", "## Triton tiles (kind, K, head_dim, dtype, key run of a 16-wide tile) and backward paths", "", "```"]
    out += [f"{key[0]:5s} K={key[1]:2d} d={key[2]:3d} {str(key[3]):15s} run={key[4]:2d} {tuple(tile)}"
            for key, tile in sorted(tb._TUNED.items(), key=str)]
    out += [f"K={key[0]:2d} d={key[1]:3d} {str(key[2]):15s} run={key[3]:2d} rpb grad={key[4]} {mode}"
            for key, mode in sorted(tb._MODES.items(), key=str)]
    out += ["```"]
    text = "\n".join(out) + "\n"
    print("\n" + text)
    if not args.no_write:
        write_results("na_gpu", text)


def _picked(kernel_size: int, head_dim: int, dtype: torch.dtype) -> str:
    """The autotuner's tiles and backward path so far for one (K, head_dim, dtype), in one line."""
    shape = (kernel_size, head_dim, dtype)
    tiles = ", ".join(f"{key[0]} {tuple(tile)}" for key, tile in sorted(tb._TUNED.items(), key=str)
                      if key[1:4] == shape)
    modes = ", ".join(mode for key, mode in sorted(tb._MODES.items(), key=str) if key[:3] == shape)
    return f"{tiles or 'default tiles'}; backward {modes or 'split (not timed)'}"


KINDS = ("fwd", "dq", "dkdv")


def kernel_calls(stage: int, dname: str) -> tuple[dict, Callable[..., dict]]:
    """Detached inputs at one stage with the default tile of each kernel forced, the forward's
    ``o``/``lse``, ``dO`` and Δ prepared.  Returns the default tiles and ``calls(table=None,
    rpb_grad=True)``: one callable per kernel kind (``table=None``: the stage's rpb; ``"none"``: no rpb)."""
    q, k, v, rpb, ks, scale = make_inputs(stage, DTYPES[dname])
    q, k, v = (t.detach() for t in (q, k, v))
    tables = {None: tb.bias_table(rpb, ks, q.device), "none": tb.bias_table(None, ks, q.device)}
    tiles = {kind: tb.candidates(kind, ks, q.shape[-1], q.dtype)[0] for kind in KINDS}
    tb.force_tiles(**tiles)
    o, lse = tb._forward(q, k, v, tables[None], ks, scale)
    do = torch.randn_like(o)
    _, delta, _ = tb._backward_dq(q, k, v, tables[None], o, lse, do, ks, scale, rpb.dtype)

    def calls(table: Optional[str] = None, rpb_grad: bool = True) -> dict:
        t = tables[table]
        return {"fwd": lambda: tb._forward(q, k, v, t, ks, scale),
                "dq": lambda: tb._backward_dq(q, k, v, t, o, lse, do, ks, scale,
                                              rpb.dtype if rpb_grad and table is None else None),
                "dkdv": lambda: tb._backward_dkdv(q, k, v, t, lse, delta, do, ks, scale)}

    return tiles, calls


def parse_tiles(text: str) -> list:
    """Tiles written ``th,tr,rows,num_warps,num_stages[,tw[,prefetch[,bias_in_dot]]]`` (flags 0 or 1),
    ``;`` between."""
    tiles = []
    for spec in text.split(";"):
        fields = [int(x) for x in spec.split(",")]
        tiles.append(tb.Tile(*fields[:6], *(bool(x) for x in fields[6:])))
    return tiles


SWEEP = [tb.Tile(*t) for t in (  # (th, tr, rows, num_warps, num_stages[, tw])
    (4, 2, 1, 4, 1), (4, 2, 2, 4, 1), (4, 4, 1, 4, 1), (4, 4, 2, 4, 1), (2, 4, 2, 2, 1), (2, 4, 1, 2, 1),
    (2, 4, 2, 4, 1), (8, 1, 1, 8, 1), (8, 1, 2, 8, 1), (4, 2, 1, 4, 2), (1, 8, 1, 1, 1), (1, 8, 2, 1, 1),
    (8, 1, 1, 4, 1, 8), (8, 2, 1, 4, 1, 8), (4, 2, 1, 2, 1, 8))]


def sweep(args) -> None:
    """Time candidate tiles of each kernel at each stage/dtype (the others at their default)."""
    for stage in args.stages:
        for dname in args.dtypes:
            default, calls = kernel_calls(stage, dname)
            runs = calls()
            results = []
            for kind in KINDS:
                for tile in args.tiles or SWEEP:
                    tb.force_tiles(**{**default, kind: tile})
                    try:
                        if args.compile_only:  # fills Triton's cache (run several at once, then time)
                            runs[kind]()
                            torch.cuda.synchronize()
                            continue
                        ms = graph_bench(runs[kind]).kernels
                    except Exception as exc:
                        ms = float("nan")
                        print(f"  {kind} {tuple(tile)}: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                    results.append((kind, tile, ms))
                    print(f"stage {stage} {dname} {kind:4s} {tuple(tile)} {ms:.4f} ms", flush=True)
            tb.force_tiles()
            for kind in KINDS if results else ():
                best = min((r for r in results if r[0] == kind), key=lambda r: r[2] if r[2] == r[2] else 1e9)
                print(f"BEST stage {stage} {dname} {kind}: {tuple(best[1])} {best[2]:.4f} ms "
                      f"(default {tuple(default[kind])})", flush=True)


def profile(args) -> None:
    """Registers/spills of each kernel and what the bias, the pipelining depth and the warps cost."""
    os.environ["SEGMAN_NA_TRITON_AUTOTUNE"] = "0"
    for stage in args.stages:
        for dname in args.dtypes:
            tiles, calls = kernel_calls(stage, dname)
            with_rpb = calls()
            with_rpb["dkdv"]()  # every kernel compiled before the register report
            for kind, kern in tb._COMPILED.items():
                print(f"stage {stage} {dname} {kind:4s} tile {tuple(tiles[kind])}: regs {kern.n_regs} "
                      f"spills {kern.n_spills} shared {kern.metadata.shared}", flush=True)
            no_rpb = calls("none")
            cases = {"fwd": with_rpb["fwd"], "fwd-norpb": no_rpb["fwd"], "dq": with_rpb["dq"],
                     "dq-nodrpb": calls(rpb_grad=False)["dq"], "dq-norpb": no_rpb["dq"],
                     "dkdv": with_rpb["dkdv"], "dkdv-norpb": no_rpb["dkdv"]}
            for name, fn in cases.items():
                print(f"stage {stage} {dname} {name:11s} {bench(fn):.4f} ms", flush=True)
            base = tiles["fwd"]
            for warps, stages in ((2, 2), (4, 1), (4, 3), (8, 2)):
                tb.force_tiles(**{**tiles, "fwd": base._replace(num_warps=warps, num_stages=stages)})
                print(f"stage {stage} {dname} fwd warps {warps} stages {stages}: {bench(cases['fwd']):.4f} ms",
                      flush=True)
            tb.force_tiles()


def once(args) -> None:
    """One forward and backward per stage/dtype at the default tiles (for ncu)."""
    os.environ["SEGMAN_NA_TRITON_AUTOTUNE"] = "0"
    for stage in args.stages:
        for dname in args.dtypes:
            q, k, v, rpb, ks, scale = make_inputs(stage, DTYPES[dname])
            out = neighborhood_attention_2d(q, k, v, ks, rpb=rpb, scale=scale, backend="triton")
            torch.autograd.grad(out, [q, k, v, rpb], torch.randn_like(out))
    torch.cuda.synchronize()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", default="triton,torch,flex", type=lambda s: s.split(","))
    parser.add_argument("--dtypes", default="fp32,bf16", type=lambda s: s.split(","))
    parser.add_argument("--stages", default="1,2,3,4", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--compile-only", action="store_true", help="with --sweep: compile every tile, time nothing")
    parser.add_argument("--tiles", type=parse_tiles,
                        help='with --sweep: these tiles instead of the built-in list, e.g. "2,4,1,4,1,8;4,2,1,2,1,8,1"')
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("na_gpu.py needs a CUDA device")
    if args.sweep:
        sweep(args)
    elif args.profile:
        profile(args)
    elif args.once:
        once(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
