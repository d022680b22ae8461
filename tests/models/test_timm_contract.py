"""The encoder as timm's own models behave: features_only, forward_intermediates, pruning, device and
dtype at construction, the input-size limits in the pretrained config, torch.fx feature extraction, and the
graph captures PyTorch keeps (torch.jit.trace, torch.export; torch.jit.script is deprecated and not supported)."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.models import create_feature_extractor

import segman.models  # noqa: F401  (registers SegMANEncoder_{t,s,b,l})

CHANNELS = {"SegMANEncoder_t": [32, 64, 144, 192], "SegMANEncoder_s": [64, 144, 288, 512],
            "SegMANEncoder_b": [96, 160, 364, 560], "SegMANEncoder_l": [96, 192, 432, 640]}


def _copy_weights(source, target):
    """The backbone weights of ``source`` into ``target`` (which has no classifier)."""
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    assert not missing and all(k.startswith("classifier") for k in unexpected)


@pytest.fixture(scope="module")
def model_and_stages():
    """SegMAN-T (random weights, eval) and its four stage maps of a 2 × 3 × 224 × 224 batch."""
    torch.manual_seed(0)
    model = timm.create_model("SegMANEncoder_t").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
    return model, x, final, stages


def test_forward_intermediates_are_the_stage_maps(model_and_stages):
    model, x, final, stages = model_and_stages
    assert [tuple(t.shape) for t in stages] == [(2, 32, 56, 56), (2, 64, 28, 28), (2, 144, 14, 14), (2, 192, 7, 7)]
    with torch.no_grad():
        assert torch.equal(final, model.forward_features(x))
        assert torch.equal(model.forward_head(final), model(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        stopped, second = model.forward_intermediates(x, indices=[1], stop_early=True)
    assert all(torch.equal(a, b) for a, b in zip(last_two, stages[2:]))
    assert torch.equal(second[0], stages[1]) and torch.equal(stopped, stages[1])
    with pytest.raises(ValueError, match="NCHW features only"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 3)])
def test_features_only_matches_the_backbone(model_and_stages, out_indices):
    model, x, _, stages = model_and_stages
    features = timm.create_model("SegMANEncoder_t", features_only=True, out_indices=out_indices).eval()
    _copy_weights(model, features.model)
    assert features.feature_info.channels() == [[32, 64, 144, 192][i] for i in out_indices]
    assert features.feature_info.reduction() == [[4, 8, 16, 32][i] for i in out_indices]
    with torch.no_grad():
        out = features(x)
    assert all(torch.equal(a, stages[i]) for a, i in zip(out, out_indices))


def test_prune_intermediate_layers_keeps_what_is_taken(model_and_stages):
    model, x, _, stages = model_and_stages
    pruned = timm.create_model("SegMANEncoder_t").eval()
    pruned.load_state_dict(model.state_dict())
    assert pruned.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(pruned.layers) == 3 and not hasattr(pruned, "classifier")
    with torch.no_grad():
        kept = pruned.forward_intermediates(x, intermediates_only=True)
    assert len(kept) == 2 and all(torch.equal(a, b) for a, b in zip(kept, stages[:2]))


def test_fx_feature_extraction_equals_eager(model_and_stages):
    model, x, _, stages = model_and_stages
    extractor = create_feature_extractor(model, return_nodes={"layers.0": "c1", "layers.6": "c4"})
    with torch.no_grad():
        out = extractor(x)
    assert torch.equal(out["c1"], stages[0]) and torch.equal(out["c4"], stages[3])
    graph_net = timm.create_model("SegMANEncoder_t", features_only=True, feature_cls="fx").eval()
    _copy_weights(model, graph_net.graph_module)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(graph_net(x), stages))


def test_traced_and_exported_graphs_equal_eager(model_and_stages):
    """Both keep each op as one ``torch.ops.segman`` node."""
    model, x, _, _ = model_and_stages
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        program = torch.export.export(model, (x,))
        assert torch.equal(traced(x), model(x)) and torch.equal(program.module()(x), model(x))
    assert any(str(node.target).startswith("segman.") for node in program.graph.nodes)


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_meta_construction_and_config_limits(name):
    model = timm.create_model(name, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert [info["num_chs"] for info in model.feature_info] == CHANNELS[name]
    cfg = model.pretrained_cfg
    assert cfg["min_input_size"] == (3, 224, 224) == cfg["input_size"] and model.min_input_size == 224


def test_dtype_at_construction():
    model = timm.create_model("SegMANEncoder_t", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
