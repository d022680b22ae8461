"""classification/make_synthetic_imagenet.py: layout and determinism."""
from __future__ import annotations

from classification_testing import load_script

make = load_script("make_synthetic_imagenet")


def test_layout_and_determinism(tmp_path):
    def make_set(name, seed):
        return make.make_synthetic_imagenet(tmp_path / name, num_classes=10, train_per_class=2, val_per_class=1,
                                            size=32, seed=seed)

    a, b, c = make_set("a", 3), make_set("b", 3), make_set("c", 4)
    classes = sorted(p.name for p in (a / "train").iterdir())
    assert classes == make.class_names(10) and classes[0] == "c00_disk" and classes[9] == "c09_ring"
    assert sorted(p.name for p in (a / "val").iterdir()) == classes
    files = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert len(files) == 10 * 3 and files[0].as_posix() == "train/c00_disk/c00_disk_00000.JPEG"
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_command_line(tmp_path, capsys):
    root = make.main([str(tmp_path / "d"), "--classes", "2", "--train-per-class", "1", "--val-per-class", "1",
                      "--size", "16"])
    assert len(list(root.rglob("*.JPEG"))) == 4 and "wrote 2 classes" in capsys.readouterr().out
