"""Tests for ``segmentation/tools/benchmark.py``."""
import pytest
from segmentation_testing import SEGMENTATION, load_tool


@pytest.fixture(scope="module")
def benchmark_tool():
    return load_tool("benchmark")


@pytest.fixture
def in_seg_dir(monkeypatch):
    monkeypatch.chdir(SEGMENTATION)


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


@pytest.mark.parametrize("flag,mode", [(["--compile"], "default"), (["--compile", "reduce-overhead"], "reduce-overhead")])
def test_compile_flag_compiles_the_blocks(benchmark_tool, in_seg_dir, monkeypatch, flag, mode):
    """``--compile [MODE]`` hands the model to ``compile_regions`` with the mode; dynamo's eager backend
    stands in for Inductor here (the same tracing, no code generation)."""
    from segman.models import compile_regions

    modes = []

    def traced_eagerly(model, mode):
        modes.append(mode)
        return compile_regions(model, backend="eager")

    monkeypatch.setattr(benchmark_tool, "compile_regions", traced_eagerly)
    result = benchmark_tool.main(["local_configs/segman/tiny/segman_t_ade.py", "--device", "cpu", "--shape", "256",
                                  "--images", "1", "--warmup", "1", *flag])
    assert modes == [mode] and result["images"] == 1
