"""MMSC decoder and SegMAN segmentor: layout, parameter totals, forward wiring (docs/model.md §5)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model_testing import TINY, TINY_INPUT, meta_encoder, shapes
from segman.models import DECODER_SETTINGS, MMSCHead, MMSCFusion, SegMAN

T_WIDTHS = (32, 64, 144, 192)
ENCODER_WIDTHS = {"t": T_WIDTHS, "s": (64, 144, 288, 512), "b": (96, 160, 364, 560), "l": (96, 192, 432, 640),
                  "l2": (96, 192, 448, 640)}

# docs/model.md §5.4: (variant, channels, feat_proj_dim, num_classes) -> decoder parameters
DECODER_PARAMS = [
    ("t", 128, 192, 150, 4_115_926), ("t", 128, 192, 19, 4_099_027), ("t", 128, 192, 171, 4_118_635),
    ("s", 144, 288, 150, 5_469_414), ("s", 152, 288, 19, 6_018_931), ("s", 144, 288, 171, 5_472_459),
    ("b", 180, 320, 150, 8_383_650), ("b", 180, 320, 19, 8_359_939), ("b", 180, 320, 171, 8_387_451),
    ("l", 224, 432, 150, 13_033_894), ("l", 224, 432, 19, 13_004_419), ("l", 224, 432, 171, 13_038_619),
    ("l2", 224, 448, 19, 13_064_147),
]
# docs/model.md §5.4: full ADE20K segmentors
SEGMENTOR_PARAMS = {"t": 6_397_260, "s": 29_424_636, "b": 51_802_820, "l": 92_335_734}
# docs/model.md §5.3: D = 3C -> (R, x_proj_weight)
DECODER_VSSM = {128: (24, (104, 384, 1)), 144: (27, (116, 432, 1)), 152: (29, (124, 456, 1)),
                180: (34, (144, 540, 1)), 224: (42, (176, 672, 1))}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def meta_decoder(widths, channels, proj, num_classes):
    with torch.device("meta"):
        return MMSCHead(widths, channels, proj, num_classes)


def conv_module(prefix, out_ch, in_ch, k=1):
    bn = {f"{prefix}.bn.{n}": (out_ch,) for n in ("weight", "bias", "running_mean", "running_var")}
    return {f"{prefix}.conv.weight": (out_ch, in_ch, k, k), f"{prefix}.bn.num_batches_tracked": (), **bn}


def expected_decoder_layout(widths, c, p, num_classes):
    """Every key and shape of docs/model.md §5.1 / §5.3 (ConvModules: bias-free conv + BN)."""
    d = 3 * c
    r = DECODER_VSSM[c][0]
    out = {"conv_seg.weight": (num_classes, c, 1, 1), "conv_seg.bias": (num_classes,)}
    out.update(conv_module("conv_downsample_2", 2 * c, c, 3))
    out.update(conv_module("conv_downsample_4", 4 * c, c, 5))
    for i, name in ((3, "linear_c4"), (2, "linear_c3"), (1, "linear_c2")):
        out.update({f"{name}.proj.weight": (p, widths[i]), f"{name}.proj.bias": (p,)})
    out.update(conv_module("linear_fuse", c, 3 * p))
    for i in range(3):
        out.update(conv_module(f"reduce_channels.{i}", c, 4 * c * 2 ** i))
    out.update({"vssm.norm1.weight": (d,), "vssm.norm1.bias": (d,), "vssm.cpe1.weight": (d, 1, 3, 3),
                "vssm.cpe1.bias": (d,), "vssm.token_mixer.x_proj_weight": (4 * (r + 2), d, 1),
                "vssm.token_mixer.dt_projs_weight": (4, d, r), "vssm.token_mixer.dt_projs_bias": (4, d),
                "vssm.token_mixer.A_logs": (4 * d, 1), "vssm.token_mixer.Ds": (4 * d,),
                "vssm.norm2.weight": (d,), "vssm.norm2.bias": (d,), "vssm.cpe2.weight": (d, 1, 3, 3),
                "vssm.cpe2.bias": (d,), "vssm.mlp.fc1.weight": (4 * d, d, 1, 1), "vssm.mlp.fc1.bias": (4 * d,),
                "vssm.mlp.dwconv.weight": (4 * d, 1, 3, 3), "vssm.mlp.dwconv.bias": (4 * d,),
                "vssm.mlp.fc2.weight": (d, 4 * d, 1, 1), "vssm.mlp.fc2.bias": (d,)})
    out.update(conv_module("short_path", c, c))
    out.update(conv_module("image_pool.1", c, c))
    out.update(conv_module("proj_out", p, 3 * c))
    out.update(conv_module("cat", c, 5 * c + 3 * p))
    return out


class TestLayout:
    def test_t_decoder_keys(self):
        decoder = meta_decoder(T_WIDTHS, 128, 192, 150)
        actual = shapes(decoder)
        assert sorted(actual.items()) == sorted(expected_decoder_layout(T_WIDTHS, 128, 192, 150).items())
        assert actual["cat.conv.weight"] == (128, 1216, 1, 1)  # docs/model.md §5.1, spelled out
        assert actual["reduce_channels.2.conv.weight"] == (128, 2048, 1, 1)
        assert actual["conv_downsample_4.conv.weight"] == (512, 128, 5, 5)

    @pytest.mark.parametrize("variant,channels,proj,num_classes,expected", DECODER_PARAMS)
    def test_decoder_params(self, variant, channels, proj, num_classes, expected):
        decoder = meta_decoder(ENCODER_WIDTHS[variant], channels, proj, num_classes)
        assert n_params(decoder) == expected
        r, x_proj = DECODER_VSSM[channels]
        assert decoder.vssm.token_mixer.dt_rank == r
        assert tuple(decoder.vssm.token_mixer.x_proj_weight.shape) == x_proj

    @pytest.mark.parametrize("variant", SEGMENTOR_PARAMS)
    def test_segmentor_params(self, variant):
        c, p = DECODER_SETTINGS[variant]
        total = n_params(meta_encoder(variant, True)) + n_params(meta_decoder(ENCODER_WIDTHS[variant], c, p, 150))
        assert total == SEGMENTOR_PARAMS[variant]

    def test_segmentor_keys(self):
        with torch.device("meta"):
            model = SegMAN("t", num_classes=150)
        assert n_params(model) == SEGMENTOR_PARAMS["t"]
        keys = model.state_dict().keys()
        assert {k.split(".")[0] for k in keys} == {"backbone", "decode_head"}
        assert "backbone.layers.6.blocks.0.token_mixer.rpb.1" in keys
        assert "decode_head.linear_c4.proj.weight" in keys
        assert not any(k.startswith("backbone.classifier") for k in keys)

    def test_s_cityscapes_override(self):
        with torch.device("meta"):
            model = SegMAN("s", num_classes=19, channels=152)
        assert n_params(model) == 29_974_153


class TestInit:
    def test_init(self):
        torch.manual_seed(0)
        decoder = MMSCHead(T_WIDTHS, 128, 192, 150)
        assert abs(decoder.conv_seg.weight.std().item() / 0.01 - 1) < 0.05
        assert torch.all(decoder.conv_seg.bias == 0)
        fan_out = 128  # cat: 1×1 conv, 128 outputs
        assert abs(decoder.cat.conv.weight.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.05
        for module in decoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
        assert decoder.linear_c2.proj.weight.abs().max() <= 64 ** -0.5  # PyTorch default: U(±1/√fan_in)


def tiny_features(batch=2, widths=(8, 16, 24, 32), size=128):
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(widths, (4, 8, 16, 32))]


class TestForward:
    def test_shapes(self):
        decoder = MMSCHead((8, 16, 24, 32), 8, 12, 5).eval()
        assert decoder(tiny_features()).shape == (2, 5, 16, 16)
        assert decoder.fuse(tiny_features()).shape == (2, 8, 16, 16)

    def test_gradients_reach_every_parameter(self):
        torch.manual_seed(0)
        decoder = MMSCHead((8, 16, 24, 32), 8, 12, 5).train()
        decoder(tiny_features()).square().mean().backward()
        assert [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []

    def test_wiring_and_concat_orders(self):
        """Rebuild every concatenation of docs/model.md §5.2 from the submodules' captured outputs."""
        torch.manual_seed(0)
        decoder = MMSCHead((8, 16, 24, 32), 8, 12, 5).eval()
        outputs, inputs = {}, {}
        for name, module in decoder.named_modules():
            if name and "." not in name or name.startswith("reduce_channels."):
                module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
                module.register_forward_pre_hook(lambda m, i, name=name: inputs.__setitem__(name, i[0]))
        features = tiny_features()
        decoder(features)
        size = features[1].shape[-2:]
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731

        c4, c3, c2 = up(outputs["linear_c4"]), up(outputs["linear_c3"]), outputs["linear_c2"]
        torch.testing.assert_close(inputs["linear_fuse"], torch.cat([c4, c3, c2], 1))
        x = outputs["linear_fuse"]
        torch.testing.assert_close(inputs["reduce_channels.2"], F.pixel_unshuffle(x, 4))
        torch.testing.assert_close(inputs["reduce_channels.1"], F.pixel_unshuffle(outputs["conv_downsample_2"], 2))
        torch.testing.assert_close(inputs["reduce_channels.0"], outputs["conv_downsample_4"])
        assert inputs["reduce_channels.0"].shape[-2:] == (4, 4)
        torch.testing.assert_close(inputs["vssm"], torch.cat(
            [outputs["reduce_channels.2"], outputs["reduce_channels.1"], outputs["reduce_channels.0"]], 1))
        s = up(outputs["vssm"])
        torch.testing.assert_close(inputs["proj_out"], s)
        t = outputs["proj_out"]
        pooled = up(outputs["image_pool"])  # a bilinear resize of the 1×1 map is a broadcast
        torch.testing.assert_close(pooled, outputs["image_pool"].expand_as(pooled))
        expected = torch.cat([outputs["short_path"], pooled, s, c2 + t, c3 + t, c4 + t], 1)
        torch.testing.assert_close(inputs["cat"], expected)
        torch.testing.assert_close(inputs["conv_seg"], outputs["cat"])  # dropout is an identity in eval

    def test_stride8_map_must_be_multiple_of_4(self):
        decoder = MMSCHead((8, 16, 24, 32), 8, 12, 5).eval()
        with pytest.raises(ValueError, match="multiples of 4"):
            decoder(tiny_features(size=96 + 16))

    def test_four_widths_required(self):
        with pytest.raises(ValueError, match="four encoder widths"):
            MMSCHead((16, 24, 32), 8, 12, 5)


class TestFusionMixin:
    def test_head_contract(self):
        """An mmseg-style owner that makes conv_seg/dropout itself gets the same parameter names."""

        class Head(MMSCFusion, nn.Module):
            def __init__(self):
                super().__init__()
                self.conv_seg = nn.Conv2d(8, 5, 1)
                self.init_mmsc([8, 16, 24, 32], 8, 12, norm_layer=nn.BatchNorm2d, align_corners=False)

        head = Head().eval()
        assert shapes(head) == shapes(MMSCHead((8, 16, 24, 32), 8, 12, 5))
        assert head.fuse(tiny_features()).shape == (2, 8, 16, 16)

    def test_norm_layers(self):
        decoder = MMSCHead((8, 16, 24, 32), 8, 12, 5, norm_layer=nn.SyncBatchNorm,
                              pool_norm_layer=lambda c: nn.GroupNorm(1, c))
        assert isinstance(decoder.cat.bn, nn.SyncBatchNorm)
        assert isinstance(decoder.image_pool[1].bn, nn.GroupNorm)


class TestSegmentor:
    def test_tiny_forward(self):
        torch.manual_seed(0)
        model = SegMAN("t", num_classes=5, channels=8, feat_proj_dim=12, **TINY).eval()
        img = torch.randn(2, 3, TINY_INPUT, 2 * TINY_INPUT)
        logits = model(img)
        assert logits.shape == (2, 5, TINY_INPUT // 8, TINY_INPUT // 4)
        full = model.encode_decode(img)
        assert full.shape == (2, 5, TINY_INPUT, 2 * TINY_INPUT)
        torch.testing.assert_close(full, F.interpolate(logits, size=img.shape[-2:], mode="bilinear"))

    @pytest.mark.parametrize("size", [(512, 1024), (1024, 2048)])
    def test_large_inputs_shapes_only(self, size):
        with torch.device("meta"):
            model = SegMAN("t", num_classes=19).eval()
            logits = model(torch.empty(1, 3, *size))
        assert logits.shape == (1, 19, size[0] // 8, size[1] // 8)

    def test_unknown_variant(self):
        with pytest.raises(ValueError, match="unknown SegMAN variant"):
            SegMAN("m")
