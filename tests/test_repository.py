"""The repository speaks of itself only: no pointers to missing files, no work-diary words.

Checked over every file git tracks (``git ls-files``):

* a path-like token that names a file or folder of this repository must exist.  A token counts when
  it starts with one of the repository's top-level folders (``segman/…``, ``docs/…``) or ends in
  ``.py``, ``.md`` or ``.sh``.  One that starts with a top-level folder must exist relative to the
  repository root or to the folder of the file that mentions it (or a folder above that).  Any other
  may also name a tracked file relative to the folder it is used from (``tools/train.py`` and
  ``local_configs/…`` from ``segmentation/``, ``train.py`` from ``classification/``).  URLs, absolute
  paths, placeholders (``{t,s}``, ``<model>``, ``*``, ``$VAR``), paths git ignores (outputs such as
  ``work_dirs/…``) and paths inside other installed packages (``mmcv/ops/info.py``) are not checked;
* the words of a lab notebook, as ``DIARY`` lists them (pytest's fixture scope excepted).

In test files only comments and docstrings are read: their string literals are fixtures, and some
name missing paths on purpose.
"""
from __future__ import annotations

import ast
import importlib.util
import io
import os
import re
import shutil
import subprocess
import tokenize
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(REPO).as_posix()

# Temporary: files being rewritten or removed in another change right now.  Remove each entry once
# that lands.
EXCLUDED_FILES: set[str] = set()
# Temporary: paths another change in progress adds; remove each entry once the file is committed.
PENDING_PATHS: set[str] = set()
# Folders of generated files that are named before they exist: each benchmark script writes its table
# here, and a GPU table appears once the script has run on a GPU.
GENERATED_DIRS = ("benchmarks/results/",)

BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".pdf", ".pth", ".tar", ".gz", ".zip", ".whl", ".so"}
CHECKED_SUFFIXES = (".py", ".md", ".sh")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
TOKEN = re.compile(r"[\w.\-/*{}<>$~+@%]+")
PLACEHOLDER = re.compile(r"[*{}<>$~@%]|\.\.\.|//")
DOMAIN = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)*\.(com|org|io|net|dev|ai)$", re.IGNORECASE)
DIARY = [
    (re.compile(r"\bsessions?\b", re.IGNORECASE), [re.compile(r"""scope\s*=\s*["']session["']""")]),
    (re.compile(r"tried,\s+not\s+kept", re.IGNORECASE), []),
]


@lru_cache(maxsize=None)
def tracked_files() -> tuple[str, ...]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return tuple(f for f in out.split("\0") if f)


def read_text(rel: str) -> str | None:
    """The file's text, or None for binary files and files missing from the working tree."""
    path = REPO / rel
    if path.suffix.lower() in BINARY_SUFFIXES or not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def prose(rel: str, text: str) -> str:
    """What is checked of a file: all of it, or only comments and docstrings for Python tests."""
    if not (rel.startswith("tests/") and rel.endswith(".py")):
        return text
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node, clean=False) or "")
    return "\n".join(parts)


@lru_cache(maxsize=None)
def top_level() -> frozenset[str]:
    return frozenset(f.split("/", 1)[0] for f in tracked_files() if "/" in f)


@lru_cache(maxsize=None)
def is_external_package(name: str) -> bool:
    """``name`` is an importable package that is not part of this repository (torch, mmcv, ...)."""
    if not name.isidentifier() or name in top_level():
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def git_ignored(rel: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", rel], cwd=REPO).returncode == 0


def path_tokens(text: str):
    """Path-like tokens of ``text`` that name (or claim to name) something in this repository."""
    for raw in TOKEN.findall(URL.sub(" ", text)):
        token = raw.rstrip(".,:;-")
        if not token or PLACEHOLDER.search(token) or token.startswith("/"):
            continue
        parts = [p for p in token.split("/") if p not in ("", ".")]
        if not parts or DOMAIN.match(parts[0]):
            continue
        first = next((p for p in parts if p != ".."), "")
        name = parts[-1]
        named_file = name.endswith(CHECKED_SUFFIXES) and len(name) > 3 and not name.startswith(".")
        if ("/" in token and first in top_level()) or named_file:
            yield token


def resolves(token: str, rel: str) -> bool:
    """``token``, mentioned in the file ``rel``, names something that is (or will be) there."""
    folder = (REPO / rel).parent
    for base in [folder, *folder.parents]:
        target = Path(os.path.normpath(base / token))
        if target.exists():
            return True
        if REPO in target.parents:
            target_rel = target.relative_to(REPO).as_posix() + ("/" if token.endswith("/") else "")
            if target_rel in PENDING_PATHS or target_rel.startswith(GENERATED_DIRS) or git_ignored(target_rel):
                return True
        if base == REPO:
            break
    parts = [p for p in token.split("/") if p not in ("", ".", "..")]
    if parts[0] in top_level():
        return False  # a path from the repository root that is not there
    if len(parts) > 1 and is_external_package(parts[0]):
        return True
    tail = "/".join(parts)
    return any(f == tail or f.endswith("/" + tail) for f in tracked_files())


def checked_files():
    for rel in tracked_files():
        if rel == SELF or rel in EXCLUDED_FILES:
            continue
        text = read_text(rel)
        if text is not None:
            yield rel, prose(rel, text)


def test_mentioned_paths_exist():
    missing = []
    for rel, text in checked_files():
        for lineno, line in enumerate(text.splitlines(), 1):
            missing += [f"{rel}:{lineno}: {token}" for token in path_tokens(line) if not resolves(token, rel)]
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)


def test_no_diary_words():
    found = []
    for rel, text in checked_files():
        for lineno, line in enumerate(text.splitlines(), 1):
            for word, allowed in DIARY:
                rest = line
                for pattern in allowed:
                    rest = pattern.sub(" ", rest)
                if word.search(rest):
                    found.append(f"{rel}:{lineno}: {line.strip()}")
    assert not found, "work-diary words (say what the code does and why instead):\n" + "\n".join(found)


def test_temporary_exclusions_are_still_needed():
    """Each exclusion above is for a change in progress: once it has landed, the entry must go."""
    tracked = set(tracked_files())
    stale = [f"EXCLUDED_FILES: {f} is no longer tracked" for f in sorted(EXCLUDED_FILES) if f not in tracked]
    stale += [f"PENDING_PATHS: {p} now exists" for p in sorted(PENDING_PATHS) if (REPO / p).exists()]
    assert not stale, "remove from tests/test_repository.py:\n" + "\n".join(stale)


@pytest.mark.parametrize("text,expected", [
    ("see shared/NOTES.md §4", ["shared/NOTES.md"]),
    ("python .hidden_tools/sweep.py --all", [".hidden_tools/sweep.py"]),
    ("segman/models/encoder.py, then docs/model.md §3.", ["segman/models/encoder.py", "docs/model.md"]),
    ("https://github.com/x/y/blob/main/setup.py and pip install 'fvcore==0.1.5' -e .", []),
    ("SegMANEncoder_{t,s,b,l} in output/<model>-224/ and $DATA/train/*.JPEG", []),
])
def test_path_tokens(text, expected):
    assert list(path_tokens(text)) == expected


@pytest.mark.parametrize("token,mentioned_in,expected", [
    ("shared/NOTES.md", "segman/models/encoder.py", False),            # outside the repository
    (".hidden_tools/sweep.py", "segman/ops/ss2d.py", False),
    ("segman/models/no_such_module.py", "docs/model.md", False),      # a top-level folder, wrong file
    ("docs/model.md", "segman/models/encoder.py", True),
    ("recipes.py", "classification/train.py", True),                  # the file's own folder
    ("../../_base_/models/segman.py", "segmentation/local_configs/segman/tiny/segman_t_ade.py", True),
    ("tools/train.py", "segman/models/cuda_graph.py", True),          # used from segmentation/
    ("mmcv/ops/info.py", "segmentation/segman_mmseg/compat.py", True),  # another package's file
    ("work_dirs/segman_t_ade/latest.pth", "README.md", True),         # an output git ignores
    ("segmentation/data/", "Makefile", True),                         # an ignored folder
])
def test_resolves(token, mentioned_in, expected):
    assert resolves(token, mentioned_in) is expected
