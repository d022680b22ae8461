"""Small building blocks of segman.models against hand-computed values (docs/model.md §2-5)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segman.models.encoder import LASSMixer
from segman.models.layers import VSSM, ConvFFN, ConvNormAct, LayerScale, RoPE2d, apply_rope
from segman.ops import neighborhood_attention_2d


class TestRoPE2d:
    def test_angle_buffer(self):
        rope = RoPE2d(16)  # q4 = 4: t = 0, 1/3, 2/3, 1
        theta = [10000 ** (-m / 3) for m in range(4)]
        expected = torch.tensor([a for a in theta for _ in range(2)])
        torch.testing.assert_close(rope.angle, expected)
        assert rope.angle.dtype == torch.float32
        assert list(rope.state_dict()) == ["angle"]  # persistent: it is in the checkpoints

    def test_tables_small_map(self):
        rope = RoPE2d(8)  # angle = [1, 1, 1e-4, 1e-4]
        sin, cos = rope((2, 3))
        assert sin.shape == cos.shape == (2, 3, 8)
        for i in range(2):
            for j in range(3):
                phi = torch.tensor([i, i, i * 1e-4, i * 1e-4, j, j, j * 1e-4, j * 1e-4])
                torch.testing.assert_close(sin[i, j], phi.sin())
                torch.testing.assert_close(cos[i, j], phi.cos())

    def test_tables_float32_for_half_buffer(self):
        rope = RoPE2d(8).half()
        sin, _ = rope((4, 4))
        assert sin.dtype == torch.float32

    def test_head_dim_must_be_multiple_of_4(self):
        with pytest.raises(ValueError, match="multiple of 4"):
            RoPE2d(6)

    def test_apply_rotates_pairs(self):
        torch.manual_seed(0)
        x = torch.randn(2, 1, 2, 3, 8)
        sin, cos = RoPE2d(8)((2, 3))
        y = apply_rope(x, sin, cos)
        phi = torch.atan2(sin, cos)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = phi[..., 0::2].cos(), phi[..., 0::2].sin()  # a pair shares its angle
        torch.testing.assert_close(y[..., 0::2], x0 * c - x1 * s)
        torch.testing.assert_close(y[..., 1::2], x0 * s + x1 * c)

    def test_apply_promotes_to_float32(self):
        sin, cos = RoPE2d(8)((2, 2))
        assert apply_rope(torch.randn(1, 1, 2, 2, 8, dtype=torch.bfloat16), sin, cos).dtype == torch.float32


class TestLayerScale:
    def test_scale_and_bias(self):
        ls = LayerScale(3, init_value=1e-6)
        assert ls.weight.shape == (3, 1, 1, 1) and ls.bias.shape == (3,)
        assert torch.all(ls.weight == 1e-6) and torch.all(ls.bias == 0)
        with torch.no_grad():
            ls.weight.copy_(torch.tensor([1.0, 2.0, -1.0]).view(3, 1, 1, 1))
            ls.bias.copy_(torch.tensor([0.5, 0.0, 3.0]))
        x = torch.ones(1, 3, 2, 2)
        expected = torch.tensor([1.5, 2.0, 2.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
        torch.testing.assert_close(ls(x), expected)

    def test_matches_depthwise_conv(self):
        torch.manual_seed(0)
        ls = LayerScale(4)
        nn.init.normal_(ls.weight)
        nn.init.normal_(ls.bias)
        x = torch.randn(2, 4, 3, 5)
        torch.testing.assert_close(ls(x), F.conv2d(x, ls.weight, ls.bias, groups=4))


class TestConvFFN:
    def test_keys(self):
        ffn = ConvFFN(4, 10)
        shapes = {k: tuple(v.shape) for k, v in ffn.state_dict().items()}
        assert shapes == {"fc1.weight": (10, 4, 1, 1), "fc1.bias": (10,), "dwconv.weight": (10, 1, 3, 3),
                          "dwconv.bias": (10,), "fc2.weight": (4, 10, 1, 1), "fc2.bias": (4,)}

    def test_inner_residual(self):
        torch.manual_seed(0)
        ffn = ConvFFN(4, 6)
        x = torch.randn(1, 4, 5, 5)
        h = F.gelu(ffn.fc1(x))
        with torch.no_grad():  # dwconv = identity → fc2(h + h)
            ffn.dwconv.weight.zero_()
            ffn.dwconv.weight[:, 0, 1, 1] = 1.0
            ffn.dwconv.bias.zero_()
        torch.testing.assert_close(ffn(x), ffn.fc2(2 * h))
        with torch.no_grad():  # dwconv = 0 → fc2(h)
            ffn.dwconv.weight.zero_()
        torch.testing.assert_close(ffn(x), ffn.fc2(h))


class TestConvNormAct:
    def test_keys_and_init(self):
        m = ConvNormAct(4, 8, kernel_size=3, stride=2, padding=1)
        assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
            "conv.weight": (8, 4, 3, 3), "bn.weight": (8,), "bn.bias": (8,), "bn.running_mean": (8,),
            "bn.running_var": (8,), "bn.num_batches_tracked": ()}
        assert torch.all(m.bn.weight == 1) and torch.all(m.bn.bias == 0)

    def test_kaiming_fan_out(self):
        torch.manual_seed(0)
        m = ConvNormAct(64, 256, kernel_size=3)
        expected = math.sqrt(2.0 / (256 * 9))
        assert abs(m.conv.weight.std().item() / expected - 1) < 0.05

    def test_forward(self):
        torch.manual_seed(0)
        m = ConvNormAct(3, 5, norm_layer=nn.BatchNorm2d).eval()
        x = torch.randn(2, 3, 4, 4)
        torch.testing.assert_close(m(x), F.relu(m.bn(m.conv(x))))


def naive_vssm(m: VSSM, x: torch.Tensor) -> torch.Tensor:
    """Step-by-step docs/model.md §4: four scan orders, per-step recurrence, adjoint merge."""
    b, c, h, w = x.shape
    r, n, length = m.dt_rank, m.d_state, h * w
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    seqs = [rows, cols, rows.flip(-1), cols.flip(-1)]
    w_x = m.x_proj_weight.view(4, r + 2 * n, c)
    a = -torch.exp(m.A_logs).view(4, c, n)
    d = m.Ds.view(4, c)
    ys = []
    for g, u in enumerate(seqs):
        z = torch.einsum("oc,bcl->bol", w_x[g], u)
        dt, bm, cm = z[:, :r], z[:, r:r + n], z[:, r + n:]
        delta = F.softplus(torch.einsum("cr,brl->bcl", m.dt_projs_weight[g], dt) + m.dt_projs_bias[g][:, None])
        state = torch.zeros(b, c, n)
        y = torch.empty(b, c, length)
        for t in range(length):
            step = delta[:, :, t, None]
            state = torch.exp(step * a[g]) * state + step * bm[:, None, :, t] * u[:, :, t, None]
            y[:, :, t] = (state * cm[:, None, :, t]).sum(-1) + d[g] * u[:, :, t]
        ys.append(y)
    col_major = (ys[1] + ys[3].flip(-1)).view(b, c, w, h).transpose(2, 3).reshape(b, c, length)
    return ys[0] + ys[2].flip(-1) + col_major


class TestVSSM:
    def test_shapes(self):
        m = VSSM(32)  # SegMAN-T stage 1: R = 2
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        assert shapes == {"x_proj_weight": (16, 32, 1), "dt_projs_weight": (4, 32, 2), "dt_projs_bias": (4, 32),
                          "A_logs": (128, 1), "Ds": (128,)}
        assert VSSM(144).x_proj_weight.shape == (44, 144, 1)
        assert VSSM(384).dt_rank == 24

    def test_init(self):
        torch.manual_seed(0)
        m = VSSM(64)
        assert torch.all(m.A_logs == 0) and torch.all(m.Ds == 1)
        assert m.x_proj_weight.abs().max() <= 64 ** -0.5
        assert m.dt_projs_weight.abs().max() <= m.dt_rank ** -0.5
        dt = F.softplus(m.dt_projs_bias)
        assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001

    def test_matches_step_by_step_reference(self):
        torch.manual_seed(0)
        m = VSSM(8, d_state=2)
        x = torch.randn(2, 8, 3, 4)
        torch.testing.assert_close(m(x), naive_vssm(m, x), rtol=1e-5, atol=1e-5)

    def test_float32_output(self):
        m = VSSM(8).to(torch.bfloat16)
        assert m(torch.randn(1, 8, 3, 3, dtype=torch.bfloat16)).dtype == torch.float32


class TestLASSMixer:
    def _mixer(self, global_mode):
        torch.manual_seed(0)
        mixer = LASSMixer(16, 2, 3, global_mode=global_mode).eval()
        for p in mixer.rpb:
            nn.init.normal_(p)
        return mixer

    def test_submodules(self):
        local, glob = self._mixer(False), self._mixer(True)
        assert [p.shape for p in local.rpb] == [(2, 5, 5)]
        assert [p.shape for p in glob.rpb] == [(2, 5, 5), (2, 49, 49)]
        assert not any(k.startswith(("dwconv", "ssm", "norm")) for k in glob.state_dict())
        assert {"dwconv.0.weight", "dwconv.1.running_var", "ssm.A_logs", "norm.weight"} <= set(local.state_dict())

    def test_global_rpb_resize(self):
        mixer = self._mixer(True)
        table = mixer.rpb[1]
        same = F.interpolate(table[None], size=(49, 49), mode="bicubic", align_corners=False)
        assert torch.equal(same[0], table)  # the resize is an identity at L = 49 (224 px input)
        assert F.interpolate(table[None], size=(16, 16), mode="bicubic", align_corners=False).shape == (1, 2, 16, 16)

    @pytest.mark.parametrize("size", [(3, 3), (4, 5), (7, 7)])
    def test_global_matches_explicit_softmax(self, size):
        mixer = self._mixer(True)
        h, w = size
        length = h * w
        x = torch.randn(2, 16, h, w)
        rope = RoPE2d(8)((h, w))
        qkv = mixer.qkv(x)
        q, k, v = (qkv[:, i * 16:(i + 1) * 16].view(2, 2, 8, h, w).permute(0, 1, 3, 4, 2) for i in range(3))
        q = apply_rope(q, *rope) * 8 ** -0.5
        k = apply_rope(k, *rope)
        vna = neighborhood_attention_2d(q, k, v, 3, rpb=mixer.rpb[0], scale=1.0)
        bias = F.interpolate(mixer.rpb[1][None], size=(length, length), mode="bicubic", align_corners=False)
        q, k, vna = (t.reshape(2, 2, length, 8) for t in (q, k, vna))
        attn = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)
        y = (attn @ vna).transpose(-1, -2).reshape(2, 16, h, w)
        expected = mixer.proj(y + mixer.lepe(qkv[:, 32:]))
        torch.testing.assert_close(mixer(x, rope), expected, rtol=1e-5, atol=1e-5)

    def test_local_branch(self):
        mixer = self._mixer(False)
        x = torch.randn(1, 16, 5, 6)
        rope = RoPE2d(8)((5, 6))
        qkv = mixer.qkv(x)
        q, k, v = (qkv[:, i * 16:(i + 1) * 16].view(1, 2, 8, 5, 6).permute(0, 1, 3, 4, 2) for i in range(3))
        vna = neighborhood_attention_2d(apply_rope(q, *rope) * 8 ** -0.5, apply_rope(k, *rope), v, 3,
                                        rpb=mixer.rpb[0], scale=1.0)
        vna = vna.permute(0, 1, 4, 2, 3).reshape(1, 16, 5, 6)
        y = mixer.norm(mixer.ssm(F.silu(mixer.dwconv[1](mixer.dwconv[0](vna)))).view(1, 16, 5, 6)) + vna
        expected = mixer.proj(y + mixer.lepe(qkv[:, 32:]))
        torch.testing.assert_close(mixer(x, rope), expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("global_mode", [False, True])
    def test_runs_under_autocast(self, global_mode):
        mixer = self._mixer(global_mode)  # q, k float32 after RoPE, v bfloat16: cast inside
        x = torch.randn(1, 16, 4, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = mixer(x, RoPE2d(8)((4, 4)))
        assert y.shape == (1, 16, 4, 4) and torch.isfinite(y).all()

    def test_even_window_rejected(self):
        with pytest.raises(ValueError, match="odd"):
            LASSMixer(16, 2, 4)
