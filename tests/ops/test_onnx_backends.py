"""The ``onnx`` backends: the unrolled scan against a float64 loop, selection only while exporting, and
every op exported alone and run in onnxruntime against the float64 references (odd sizes, batch 2)."""
from __future__ import annotations

import pytest
import torch
from ops_testing import (EXPORT_BACKEND, assert_rel_close, ref_cross_merge, ref_cross_scan,
                         ref_neighborhood_attention_2d, ref_selective_scan)

from segman.ops import (BackendError, bilinear_resize, cross_merge, cross_scan, neighborhood_attention_2d,
                        selective_scan, ss2d_scan)
from segman.ops.torch_backend import neighborhood_attention as na_reference
from segman.ops.torch_backend.linear_scan import unrolled_linear_scan
from segman.ops.torch_backend.selective_scan import export_forward


def _loop_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    h, out = torch.zeros_like(b[..., 0]), []
    for t in range(a.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out.append(h)
    return torch.stack(out, -1)


@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 255, 257, 300])  # 1 to 3 chunk levels of 16
def test_unrolled_linear_scan_matches_a_loop(length):
    a = torch.rand(2, 3, 5, length).transpose(1, 2)  # non-contiguous
    b = torch.randn(2, 5, 3, length)
    assert_rel_close(unrolled_linear_scan(a, b), _loop_scan(a, b), 1e-6, f"L={length}")
    a64, b64 = a.double(), b.double()
    assert_rel_close(unrolled_linear_scan(a64, b64), _loop_scan(a, b), 1e-13, f"L={length} float64")


def test_unrolled_linear_scan_underflows_cleanly():
    a = torch.full((1, 200), 1e-30)
    a[0, 100:] = 1.0
    h = unrolled_linear_scan(a, torch.ones(1, 200))
    assert torch.isfinite(h).all() and torch.allclose(h, _loop_scan(a, torch.ones(1, 200)).float())


def _scan_inputs(batch=2, groups=2, per_group=3, d_state=3, length=67):
    channels = groups * per_group
    return dict(u=torch.randn(batch, channels, length), delta=torch.randn(batch, channels, length) * 0.5,
                A=-torch.rand(channels, d_state) - 0.1, B=torch.randn(batch, groups, d_state, length),
                C=torch.randn(batch, groups, d_state, length), D=torch.randn(channels),
                delta_bias=torch.randn(channels) * 0.1)


def test_export_form_of_the_selective_scan_matches_the_loop():
    x = _scan_inputs()
    assert_rel_close(export_forward(**x, delta_softplus=True), ref_selective_scan(**x), 1e-5, "export form")


@pytest.mark.parametrize("dilation", [1, 2])
def test_export_form_of_neighborhood_attention_matches_the_reference(dilation):
    q, k, v = (torch.randn(2, 2, 13, 11, 8) for _ in range(3))
    rpb = torch.randn(2, 5, 5)
    out, lse = na_reference.forward(q, k, v, 3, dilation, rpb, 0.5, export=True)
    assert lse is None
    expected = ref_neighborhood_attention_2d(q, k, v, 3, dilation=dilation, rpb=rpb, scale=0.5)
    assert_rel_close(out, expected, 1e-5, f"dilation {dilation}")


def test_onnx_backend_runs_only_while_exporting():
    x = _scan_inputs()
    with pytest.raises(BackendError, match="only while torch.onnx.export"):
        selective_scan(**x, backend=EXPORT_BACKEND)


class _AllOps(torch.nn.Module):
    """Every public op once, as a model calls them."""

    def forward(self, x, q, k, v, rpb, u, delta, A, B, C, D, delta_bias):
        scanned = cross_merge(cross_scan(x).unflatten(-1, x.shape[-2:]))
        na = neighborhood_attention_2d(q, k, v, 3, rpb=rpb, scale=1.0)
        y = selective_scan(u, delta, A, B, C, D, delta_bias)
        ss2d = ss2d_scan(x, delta, A, B, C)  # x's 2 channels in 4 directions: the scan's 8 channels
        return scanned, na, y, ss2d, bilinear_resize(x, (13, 4))


def test_every_op_exports_to_standard_onnx_and_matches_the_references(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    x = torch.randn(2, 2, 7, 5).transpose(2, 3)  # non-contiguous, 2 channels, 5×7
    q, k, v = (torch.randn(2, 2, 9, 11, 8) for _ in range(3))
    rpb = torch.randn(2, 5, 5)
    scan = _scan_inputs(batch=2, groups=4, per_group=2, d_state=3, length=35)
    inputs = (x, q, k, v, rpb, *scan.values())
    path = tmp_path / "ops.onnx"
    with torch.no_grad():
        torch.onnx.export(_AllOps().eval(), inputs, dynamo=True, verbose=False).save(str(path))
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, "only standard operators"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    scanned, na, y, ss2d, resized = (torch.from_numpy(o) for o in session.run(None, feeds))
    b, c, h, w = x.shape
    assert_rel_close(scanned, ref_cross_merge(ref_cross_scan(x).view(b, 4, c, h, w)), 1e-6, "cross scan/merge")
    assert_rel_close(na, ref_neighborhood_attention_2d(q, k, v, 3, rpb=rpb, scale=1.0), 1e-5, "NA with rpb")
    assert_rel_close(y, ref_selective_scan(**scan), 1e-5, "selective scan")
    xs = ref_cross_scan(x).reshape(b, 4 * c, h * w)
    ys = ref_selective_scan(xs, scan["delta"], scan["A"], scan["B"], scan["C"])
    assert_rel_close(ss2d, ref_cross_merge(ys.view(b, 4, c, h, w)), 1e-5, "ss2d")
    assert_rel_close(resized, torch.nn.functional.interpolate(x, (13, 4), mode="bilinear"), 1e-6, "resize")
