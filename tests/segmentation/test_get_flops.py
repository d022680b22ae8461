"""Tests for ``segmentation/tools/get_flops.py`` (FLOP convention of docs/model.md §9)."""
import pytest
import torch
import torch.nn as nn

from segmentation_testing import SEGMENTATION, load_tool
from segman.ops import neighborhood_attention_2d, selective_scan, ss2d_scan


@pytest.fixture(scope="module")
def get_flops():
    pytest.importorskip("fvcore")
    return load_tool("get_flops")


@pytest.fixture
def in_seg_dir(monkeypatch):
    """Configs use paths relative to ``segmentation/``, as the tools are run from there."""
    monkeypatch.chdir(SEGMENTATION)


def _flops(get_flops, fn, *inputs):
    class Wrap(nn.Module):
        def forward(self, *xs):
            return fn(*xs)

    with torch.no_grad():
        return get_flops.flop_analysis(Wrap(), inputs).total()


class TestHandles:
    def test_neighborhood_attention(self, get_flops):
        b, n, h, w, hd, k = 1, 2, 9, 10, 4, 5
        q = torch.randn(b, n, h, w, hd)
        rpb = torch.zeros(n, 2 * k - 1, 2 * k - 1)
        got = _flops(get_flops, lambda q, r: neighborhood_attention_2d(q, q, q, k, rpb=r, scale=1.0), q, rpb)
        assert got == 2 * b * n * h * w * hd * k * k + b * n * h * w * k * k

    def test_neighborhood_attention_without_rpb(self, get_flops):
        q = torch.randn(1, 1, 7, 7, 8)
        got = _flops(get_flops, lambda q: neighborhood_attention_2d(q, q, q, 3), q)
        assert got == 2 * 49 * 8 * 9 + 49 * 9

    def test_selective_scan(self, get_flops):
        bt, groups, dg, n_state, length = 2, 4, 3, 2, 6
        channels = groups * dg
        u = torch.randn(bt, channels, length)
        a = -torch.rand(channels, n_state)
        bc = torch.randn(bt, groups, n_state, length)
        got = _flops(get_flops, lambda u, a, bc: selective_scan(u, u, a, bc, bc), u, a, bc)
        assert got == 9 * bt * length * channels * n_state + bt * channels * length

    def test_ss2d_scan_counts_its_four_directions(self, get_flops):
        """The composed SS2D step (cross-scan, scan, cross-merge) counts as one scan over 4C channels."""
        bt, channels, height, width = 2, 3, 4, 5
        length = height * width
        x = torch.randn(bt, channels, height, width)
        delta = torch.randn(bt, 4 * channels, length)
        a = -torch.rand(4 * channels, 1)
        bc = torch.randn(bt, 4, 1, length)
        got = _flops(get_flops, lambda x, d, a, bc: ss2d_scan(x, d, a, bc, bc), x, delta, a, bc)
        assert got == 9 * bt * length * 4 * channels + bt * 4 * channels * length

    def test_sdpa_counts_like_einsums(self, get_flops):
        b, n, length, hd = 1, 3, 16, 8
        q = torch.randn(b, n, length, hd)
        got = _flops(get_flops, lambda q: nn.functional.scaled_dot_product_attention(q, q, q), q)
        assert got == 2 * b * n * length * length * hd


def test_tiny_ade_512(get_flops, in_seg_dir, capsys):
    """SegMAN-T ADE20K at 512×512: 6.2 G / 6.4 M as published (encoder 3.39 + decoder 2.82, 6,397,260 params)."""
    result = get_flops.main(["local_configs/segman/tiny/segman_t_ade.py", "--shape", "512", "512", "--fvcore-only"])
    assert abs(result["total"] - 6.2) < 0.05
    assert abs(result["encoder"] - 3.39) < 0.005
    assert abs(result["decoder"] - 2.82) < 0.005
    assert result["params"] == 6_397_260
    assert result["backbone_params"] == 2_281_334
    assert result["decode_head_params"] == 4_115_926
    out = capsys.readouterr().out
    assert "6.22 G" in out and "6,397,260" in out


def test_missing_config(get_flops, in_seg_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_flops.main(["local_configs/segman/tiny/no_such_config.py"])


def test_needs_config_or_imagenet(get_flops):
    with pytest.raises(SystemExit):
        get_flops.parse_args([])
