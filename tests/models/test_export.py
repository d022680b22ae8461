"""ONNX export of SegMAN-T (segman.export) at the deployment size, run in onnxruntime (a free batch is
tested through tools/pytorch2onnx.py, tests/segmentation/test_deploy.py)."""
from __future__ import annotations

import pytest
import torch

from segman.export import OnnxModel, export_onnx, verify_onnx
from segman.models import SegMAN

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = SegMAN("t", num_classes=150)
    path = str(tmp_path_factory.mktemp("onnx") / "segman_t.onnx")
    export_onnx(model, path, shape=(512, 512), method="encode_decode")
    return model, path


def test_segman_t_at_512_matches_pytorch(exported):
    model, path = exported
    onnx_model = OnnxModel(path)
    assert onnx_model.input_shape == (1, 3, 512, 512) and onnx_model.num_classes == 150
    assert verify_onnx(model, path, method="encode_decode") < 1e-4
    assert model.training, "export leaves the model's mode as it was"


def test_wrong_input_size_is_named(exported):
    _, path = exported
    with pytest.raises(ValueError, match=r"takes images of shape .*512, 512.*--shape H W"):
        OnnxModel(path)(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"--dynamic-batch"):
        OnnxModel(path)(torch.randn(2, 3, 512, 512))


def test_missing_method_is_named():
    with pytest.raises(ValueError, match="no method 'forward_dummy'.*encode_decode"):
        export_onnx(SegMAN("t", num_classes=5), "unused.onnx", method="forward_dummy")
