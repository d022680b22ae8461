"""Tests for ``segmentation/tools/benchmark.py``."""
import importlib.util
import os.path as osp

import pytest

SEG_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), "segmentation")


@pytest.fixture(scope="module")
def benchmark_tool():
    path = osp.join(SEG_DIR, "tools", "benchmark.py")
    spec = importlib.util.spec_from_file_location("segman_tools_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def in_seg_dir(monkeypatch):
    monkeypatch.chdir(SEG_DIR)


def test_cpu_tiny_two_images(benchmark_tool, in_seg_dir, capsys):
    result = benchmark_tool.main(["local_configs/segman/tiny/segman_t_ade.py", "--device", "cpu",
                                  "--shape", "256", "256", "--images", "2", "--warmup", "1"])
    assert result["images"] == 2 and result["shape"] == (256, 256)
    assert result["images_per_s"] > 0
    out = capsys.readouterr().out
    assert "images/s" in out and "ms/image" in out and "Device: CPU" in out


def test_missing_config(benchmark_tool, in_seg_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        benchmark_tool.main(["local_configs/segman/tiny/nope.py", "--device", "cpu"])
