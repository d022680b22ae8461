"""SegMANEncoder: layout and parameter counts of every variant (docs/model.md §1.1, §7), behaviour on tiny inputs."""
import copy
import io

import pytest
import timm
import torch
from timm.layers import DropPath
from torch import nn

from segman.models import SegMANEncoder, segman_encoder

from model_testing import TINY, TINY_INPUT, meta_encoder, shapes

# docs/model.md §1.1, written out (FFN widths and dt ranks as numbers, not formulas)
VARIANT_TABLE = {
    "t": dict(dims=(32, 64, 144, 192), depths=(2, 2, 4, 2), heads=(1, 2, 4, 8), windows=(11, 9, 9, 7),
              ffn=(128, 256, 432, 576), ranks=(2, 4, 9), layer_scale=False),
    "s": dict(dims=(64, 144, 288, 512), depths=(2, 2, 10, 4), heads=(2, 4, 8, 16), windows=(11, 9, 7, 7),
              ffn=(256, 576, 979, 1740), ranks=(4, 9, 18), layer_scale=False),
    "b": dict(dims=(96, 160, 364, 560), depths=(4, 4, 18, 4), heads=(4, 8, 13, 20), windows=(11, 9, 7, 7),
              ffn=(384, 640, 1092, 1680), ranks=(6, 10, 23), layer_scale=True),
    "l": dict(dims=(96, 192, 432, 640), depths=(4, 4, 28, 4), heads=(4, 8, 12, 20), windows=(11, 9, 7, 7),
              ffn=(384, 768, 1296, 1920), ranks=(6, 12, 27), layer_scale=True),
    "l2": dict(dims=(96, 192, 448, 640), depths=(4, 4, 26, 4), heads=(4, 8, 14, 20), windows=(11, 9, 7, 7),
               ffn=(384, 768, 1344, 1920), ranks=(6, 12, 28), layer_scale=True),
}

# docs/model.md §1.1: (with ImageNet classifier, backbone form)
PARAM_COUNTS = {"t": (3_506_014, 2_281_334), "s": (25_507_582, 23_955_222), "b": (45_020_682, 43_419_170),
                "l": (80_985_272, 79_301_840), "l2": (80_978_132, 79_294_700)}

# RPB and x_proj shapes per stage (docs/model.md §3.2, §4.1)
RPB_SHAPES = {
    "t": [(1, 21, 21), (2, 17, 17), (4, 17, 17), (8, 13, 13), (8, 49, 49)],
    "s": [(2, 21, 21), (4, 17, 17), (8, 13, 13), (16, 13, 13), (16, 49, 49)],
    "b": [(4, 21, 21), (8, 17, 17), (13, 13, 13), (20, 13, 13), (20, 49, 49)],
    "l": [(4, 21, 21), (8, 17, 17), (12, 13, 13), (20, 13, 13), (20, 49, 49)],
    "l2": [(4, 21, 21), (8, 17, 17), (14, 13, 13), (20, 13, 13), (20, 49, 49)],
}
X_PROJ_SHAPES = {
    "t": [(16, 32, 1), (24, 64, 1), (44, 144, 1)],
    "s": [(24, 64, 1), (44, 144, 1), (80, 288, 1)],
    "b": [(32, 96, 1), (48, 160, 1), (100, 364, 1)],
    "l": [(32, 96, 1), (56, 192, 1), (116, 432, 1)],
    "l2": [(32, 96, 1), (56, 192, 1), (120, 448, 1)],
}
VARIANT_NAMES = list(VARIANT_TABLE)


def bn_keys(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def expected_layout(v, classifier, num_classes=1000):
    """Every state_dict key and shape, from docs/model.md §2.1 and §7."""
    out = {}
    c0 = v["dims"][0]
    for idx, (i, o) in zip((0, 3, 6, 9), ((3, c0 // 2), (c0 // 2, c0 // 2), (c0 // 2, c0), (c0, c0))):
        out[f"patch_embed.{idx}.weight"] = (o, i, 3, 3)
        out.update(bn_keys(f"patch_embed.{idx + 1}", o))
    for s in range(4):
        c, f, n, k = v["dims"][s], v["ffn"][s], v["heads"][s], v["windows"][s]
        out[f"layers.{2 * s}.rope.angle"] = (c // n // 2,)
        for j in range(v["depths"][s]):
            p = f"layers.{2 * s}.blocks.{j}."
            block = {"cpe1.weight": (c, 1, 3, 3), "cpe1.bias": (c,), "norm1.weight": (c,), "norm1.bias": (c,),
                     "token_mixer.qkv.weight": (3 * c, c, 1, 1), "token_mixer.qkv.bias": (3 * c,),
                     "token_mixer.lepe.weight": (c, 1, 5, 5), "token_mixer.lepe.bias": (c,),
                     "token_mixer.proj.weight": (c, c, 1, 1), "token_mixer.proj.bias": (c,),
                     "token_mixer.rpb.0": (n, 2 * k - 1, 2 * k - 1),
                     "cpe2.weight": (c, 1, 3, 3), "cpe2.bias": (c,), "norm2.weight": (c,), "norm2.bias": (c,),
                     "mlp.fc1.weight": (f, c, 1, 1), "mlp.fc1.bias": (f,), "mlp.dwconv.weight": (f, 1, 3, 3),
                     "mlp.dwconv.bias": (f,), "mlp.fc2.weight": (c, f, 1, 1), "mlp.fc2.bias": (c,)}
            if s < 3:
                r = v["ranks"][s]
                block.update({"token_mixer.dwconv.0.weight": (c, 1, 3, 3), "token_mixer.dwconv.0.bias": (c,),
                              "token_mixer.ssm.x_proj_weight": (4 * (r + 2), c, 1),
                              "token_mixer.ssm.dt_projs_weight": (4, c, r), "token_mixer.ssm.dt_projs_bias": (4, c),
                              "token_mixer.ssm.A_logs": (4 * c, 1), "token_mixer.ssm.Ds": (4 * c,),
                              "token_mixer.norm.weight": (c,), "token_mixer.norm.bias": (c,)})
                block.update(bn_keys("token_mixer.dwconv.1", c))
            else:
                block["token_mixer.rpb.1"] = (n, 49, 49)
            if v["layer_scale"]:
                for ls in ("layer_scale1", "layer_scale2"):
                    block.update({f"{ls}.weight": (c, 1, 1, 1), f"{ls}.bias": (c,)})
            out.update({p + key: shape for key, shape in block.items()})
        if s < 3:
            out[f"layers.{2 * s + 1}.0.weight"] = (v["dims"][s + 1], c, 3, 3)
            out.update(bn_keys(f"layers.{2 * s + 1}.1", v["dims"][s + 1]))
    if classifier:
        out.update({"classifier.0.weight": (1024, v["dims"][3], 1, 1), "classifier.0.bias": (1024,),
                    "classifier.4.weight": (num_classes, 1024, 1, 1), "classifier.4.bias": (num_classes,)})
        out.update(bn_keys("classifier.1", 1024))
    return out


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", VARIANT_NAMES)
class TestVariants:
    def test_param_counts(self, variant):
        with_classifier, backbone = PARAM_COUNTS[variant]
        assert n_params(meta_encoder(variant, False)) == with_classifier
        assert n_params(meta_encoder(variant, True)) == backbone

    @pytest.mark.parametrize("backbone", [False, True])
    def test_state_dict_layout(self, variant, backbone):
        actual = shapes(meta_encoder(variant, backbone))
        expected = expected_layout(VARIANT_TABLE[variant], classifier=not backbone)
        assert sorted(actual.items()) == sorted(expected.items())

    def test_tables(self, variant):
        sd = shapes(meta_encoder(variant, True))
        rpb = [sd[f"layers.{2 * s}.blocks.0.token_mixer.rpb.0"] for s in range(4)]
        assert rpb + [sd["layers.6.blocks.0.token_mixer.rpb.1"]] == RPB_SHAPES[variant]
        x_proj = [sd[f"layers.{2 * s}.blocks.0.token_mixer.ssm.x_proj_weight"] for s in range(3)]
        assert x_proj == X_PROJ_SHAPES[variant]
        assert ("layers.4.blocks.0.layer_scale1.weight" in sd) == (variant in ("b", "l", "l2"))
        assert not any(k.startswith(("classifier", "layers.7")) for k in sd)
        assert "layers.7" in dict(meta_encoder(variant, True).named_modules())  # an nn.Identity

    def test_rope_buffer_persistent(self, variant):
        model = meta_encoder(variant, True)
        assert "layers.0.rope.angle" in model.state_dict()
        assert "layers.0.rope.angle" in dict(model.named_buffers())


class TestTimm:
    @pytest.mark.parametrize("name,crop_pct", [("SegMANEncoder_t", 0.9), ("SegMANEncoder_s", 0.9),
                                               ("SegMANEncoder_b", 0.95), ("SegMANEncoder_l", 0.95)])
    def test_create_model(self, name, crop_pct):
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=1000)
        assert isinstance(model, SegMANEncoder)
        cfg = model.pretrained_cfg
        assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == crop_pct
        assert cfg["interpolation"] == "bicubic" and cfg["classifier"] == "classifier"
        assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
        assert timm.data.resolve_data_config({}, model=model)["crop_pct"] == crop_pct

    def test_registry(self):
        assert timm.list_models("SegMANEncoder*") == [f"SegMANEncoder_{v}" for v in ("b", "l", "s", "t")]

    def test_create_with_kwargs(self):
        with torch.device("meta"):
            model = timm.create_model("SegMANEncoder_t", num_classes=10, drop_path_rate=0.1, backbone=False)
        assert model.get_classifier().out_channels == 10
        assert model.layers[6].blocks[1].drop_path.drop_prob == pytest.approx(0.1)


class TestModelSurface:
    def test_forward_features_and_head(self):
        torch.manual_seed(0)
        model = SegMANEncoder(**TINY, num_classes=7).eval()
        x = torch.randn(2, 3, TINY_INPUT, TINY_INPUT)
        feats = model.forward_features(x)
        assert feats.shape == (2, 16, 3, 3)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1024)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        assert model(x).shape == (2, 7)
        assert model.num_features == 16 and model.head_hidden_size == 1024
        assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]

    def test_reset_classifier(self):
        model = SegMANEncoder(**TINY, num_classes=7).eval()
        x = torch.randn(1, 3, TINY_INPUT, TINY_INPUT)
        model.reset_classifier(3)
        assert model.get_classifier().out_channels == 3 and model(x).shape == (1, 3)
        assert model.get_classifier().bias.abs().sum() == 0
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity) and model(x).shape == (1, 1024)
        with pytest.raises(ValueError, match="global_pool"):
            model.reset_classifier(3, global_pool="max")

    def test_backbone_form(self):
        model = SegMANEncoder(**TINY, backbone=True)
        assert not hasattr(model, "classifier") and model.num_classes == 0
        out = model(torch.randn(1, 3, TINY_INPUT, 2 * TINY_INPUT))
        assert [tuple(t.shape) for t in out] == [(1, 8, 24, 48), (1, 16, 12, 24), (1, 16, 6, 12), (1, 16, 3, 6)]
        with pytest.raises(RuntimeError, match="no classifier"):
            model.reset_classifier(3)

    def test_no_weight_decay(self):
        assert SegMANEncoder(**TINY).no_weight_decay() == set()  # RPB, A_logs, LayerScale are decayed upstream

    def test_init(self):
        torch.manual_seed(0)
        model = segman_encoder("t", backbone=True)
        qkv = model.layers[4].blocks[0].token_mixer.qkv
        assert abs(qkv.weight.std().item() - 0.02) < 0.002 and qkv.weight.abs().max() <= 2.0
        assert torch.all(qkv.bias == 0)
        assert all(torch.all(p == 0) for n, p in model.named_parameters() if ".rpb." in n)
        assert torch.all(model.layers[0].blocks[0].token_mixer.ssm.Ds == 1)
        torch.manual_seed(0)
        big = SegMANEncoder(**{**TINY, "layer_scale_init_value": 1e-6})
        assert torch.all(big.layers[0].blocks[0].layer_scale1.weight == 1e-6)
        assert torch.all(big.layers[0].blocks[0].layer_scale1.bias == 0)


class TestForward:
    def test_classifier_t_224(self):
        torch.manual_seed(0)
        model = segman_encoder("t").eval()
        with torch.inference_mode():
            out = model(torch.randn(1, 3, 224, 224))
        assert out.shape == (1, 1000) and torch.isfinite(out).all()

    def test_backbone_t_512(self):
        torch.manual_seed(0)
        model = segman_encoder("t", backbone=True).eval()
        with torch.inference_mode():
            out = model(torch.randn(1, 3, 512, 512))
        assert [tuple(t.shape) for t in out] == [(1, 32, 128, 128), (1, 64, 64, 64), (1, 144, 32, 32),
                                                 (1, 192, 16, 16)]

    def test_gradients_reach_every_parameter_t(self):
        torch.manual_seed(0)
        model = segman_encoder("t")
        model(torch.randn(1, 3, 224, 224)).logsumexp(-1).sum().backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert no_grad == []

    def test_classifier_at_other_sizes(self):
        model = SegMANEncoder(**TINY).eval()  # rpb.1 is resized, so any valid size works
        assert model(torch.randn(1, 3, 128, 160)).shape == (1, 1000)


class TestTrainEval:
    def test_batchnorm_statistics(self):
        model = SegMANEncoder(**TINY, backbone=True)
        x = torch.randn(2, 3, TINY_INPUT, TINY_INPUT)
        bn = model.patch_embed[1]
        model.eval()
        model(x)
        assert torch.all(bn.running_mean == 0)
        model.train()
        model(x)
        assert not torch.all(bn.running_mean == 0)

    def test_drop_path_schedule(self):
        model = SegMANEncoder(**TINY, drop_path_rate=0.4)
        blocks = [b for stage in model.layers[::2] for b in stage.blocks]
        assert isinstance(blocks[0].drop_path, nn.Identity)
        rates = [b.drop_path.drop_prob for b in blocks[1:]]
        assert all(isinstance(b.drop_path, DropPath) for b in blocks[1:])
        assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4])

    def test_drop_path_train_vs_eval(self):
        torch.manual_seed(0)
        model = SegMANEncoder(**{**TINY, "layer_scale_init_value": 1.0}, drop_path_rate=0.5, backbone=True)
        reference = SegMANEncoder(**{**TINY, "layer_scale_init_value": 1.0}, backbone=True)
        reference.load_state_dict(model.state_dict())
        x = torch.randn(4, 3, TINY_INPUT, TINY_INPUT)
        model.eval()
        reference.eval()
        torch.testing.assert_close(model(x)[-1], reference(x)[-1])
        model.train()
        torch.manual_seed(1)
        first = model(x)[-1]
        second = model(x)[-1]
        assert not torch.allclose(first, second)

    def test_gradient_checkpointing(self):
        torch.manual_seed(0)
        plain = SegMANEncoder(**TINY, backbone=True)
        ckpt = SegMANEncoder(**TINY, backbone=True, use_checkpoint=(1, 2, 0, 1))
        ckpt.load_state_dict(plain.state_dict())
        calls = []
        ckpt.layers[2].blocks[1].register_forward_pre_hook(lambda *_: calls.append(1))
        x = torch.randn(2, 3, TINY_INPUT, TINY_INPUT, requires_grad=True)
        for model in (plain, ckpt):
            sum(f.square().mean() for f in model(x)).backward()
        assert len(calls) == 2  # forward + recomputation
        for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
        ckpt.set_grad_checkpointing(False)
        assert [s.checkpoint_blocks for s in ckpt.layers[::2]] == [0, 0, 0, 0]
        ckpt.set_grad_checkpointing()
        assert [s.checkpoint_blocks for s in ckpt.layers[::2]] == [1, 2, 1, 1]

    def test_gradient_checkpointing_with_stochastic_depth(self):
        """A checkpointed block draws its stochastic-depth scales before the checkpoint (no RNG state
        is stashed, which a CUDA graph capture forbids) and its recomputation reuses them: outputs
        and gradients equal those of the model without checkpointing at the same seed."""
        torch.manual_seed(0)
        plain = SegMANEncoder(**TINY, backbone=True, drop_path_rate=0.5)
        ckpt = SegMANEncoder(**TINY, backbone=True, drop_path_rate=0.5, use_checkpoint=(1, 2, 1, 1))
        ckpt.load_state_dict(plain.state_dict())
        x = torch.randn(4, 3, TINY_INPUT, TINY_INPUT, requires_grad=True)
        outs = []
        for model in (plain, ckpt):
            torch.manual_seed(7)
            features = model(x)
            outs.append(features)
            sum(f.square().mean() for f in features).backward()
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b)
        for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
        torch.manual_seed(7)
        again = ckpt(x)[-1]
        torch.manual_seed(8)
        assert not torch.allclose(again, ckpt(x)[-1]), "the scales must be random"
        block = ckpt.layers[2].blocks[1]
        keep = block.draw_keep(torch.zeros(1000, 1, 1, 1))
        rate = block.drop_path.drop_prob
        assert all(set(k.unique().tolist()) == {0.0, torch.tensor(1.0).div(1 - rate).item()} for k in keep)
        assert abs(float((keep[0] > 0).float().mean()) - (1 - rate)) < 0.1
        assert block.eval().draw_keep(x) is None

    def test_cuda_graph_option_off_the_gpu(self):
        """``cuda_graph`` adds no state and, on CPU, runs the eager forward (the GPU side is in
        test_cuda_graph_gpu.py); copies of the model carry their own, uncaptured, graph."""
        torch.manual_seed(0)
        plain = SegMANEncoder(**TINY, backbone=True)
        graphed = SegMANEncoder(**TINY, backbone=True, cuda_graph=True)
        graphed.load_state_dict(plain.state_dict(), strict=True)
        assert list(graphed.state_dict()) == list(plain.state_dict())
        assert [n for n, _ in graphed.named_modules()] == [n for n, _ in plain.named_modules()]
        x = torch.randn(2, 3, TINY_INPUT, TINY_INPUT)
        for a, b in zip(graphed.train()(x), plain.train()(x)):
            assert torch.equal(a, b)
        assert not graphed.training_graph.captured
        twin = copy.deepcopy(graphed)
        assert twin.training_graph._owner is twin and twin.training_graph is not graphed.training_graph


class TestErrors:
    def test_too_small_input(self):
        model = meta_encoder("t", True)
        with pytest.raises(ValueError, match="at least 224×224 px"):
            model(torch.empty(1, 3, 192, 256, device="meta"))

    def test_not_multiple_of_32(self):
        with pytest.raises(ValueError, match="multiples of 32"):
            meta_encoder("t", True)(torch.empty(1, 3, 240, 256, device="meta"))

    @pytest.mark.parametrize("shape,dtype,match", [
        ((3, 224, 224), torch.float32, r"\(B, C, H, W\) batch, got shape \(3, 224, 224\)"),
        ((1, 3, 224, 224), torch.uint8, "floating-point image, got torch.uint8"),
        ((1, 4, 224, 224), torch.float32, r"3-channel images, got 4 channels; drop the alpha channel"),
        ((1, 1, 224, 224), torch.float32, "3-channel images, got 1 channels"),
    ])
    def test_wrong_batches_are_named(self, shape, dtype, match):
        with pytest.raises(ValueError, match=match):
            meta_encoder("t", True)(torch.empty(*shape, dtype=dtype, device="meta"))

    def test_float16_on_the_cpu_is_named(self):
        with pytest.raises(ValueError, match="float16 inputs need a GPU"):
            SegMANEncoder(**TINY, backbone=True)(torch.zeros(1, 3, 96, 96, dtype=torch.float16))

    def test_minimum_size(self):
        assert meta_encoder("t", True).min_input_size == 224
        assert SegMANEncoder(**TINY).min_input_size == 96
        assert SegMANEncoder(**{**TINY, "window_sizes": (3, 3, 9, 1)}).min_input_size == 160  # 9 × 16 = 144

    def test_unknown_variant(self):
        with pytest.raises(ValueError, match="unknown SegMAN variant 'xl'.*t, s, b, l, l2"):
            segman_encoder("xl")

    def test_inconsistent_stage_settings(self):
        with pytest.raises(ValueError, match="4 entries"):
            SegMANEncoder(**{**TINY, "depths": (1, 1, 1)})


def test_save_load_round_trip():
    torch.manual_seed(0)
    model = SegMANEncoder(**{**TINY, "layer_scale_init_value": 1e-2}, num_classes=5)
    with torch.no_grad():  # make the zero-initialised tables matter
        for name, p in model.named_parameters():
            if ".rpb." in name:
                p.normal_()
    model.train()(torch.randn(2, 3, TINY_INPUT, TINY_INPUT))  # non-trivial BN statistics
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    restored = SegMANEncoder(**{**TINY, "layer_scale_init_value": 1e-2}, num_classes=5)
    restored.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.randn(2, 3, TINY_INPUT, TINY_INPUT)
    assert torch.equal(model.eval()(x), restored.eval()(x))
