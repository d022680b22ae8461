"""Loading the official SegMAN checkpoints (docs/model.md §7).

Two kinds of files exist:

* ImageNet encoders from timm's training script, ``SegMAN_Encoder_{t,s,b,l}.pth.tar``:
  ``{'state_dict': ..., 'state_dict_ema': ..., 'args': Namespace, ...}``; the EMA weights are the
  ones to use.  They load into the classification form, or into the backbone form once the
  ``classifier.*`` keys are dropped.
* mmseg segmentation checkpoints: ``{'meta': ..., 'state_dict': {backbone.*, decode_head.*}}``,
  which load into :class:`segman.models.SegMAN` unchanged.

Files are read with ``torch.load(weights_only=True)``; ``argparse.Namespace`` (timm's ``args``) and
numpy scalars/arrays (mmcv's ``meta``) are allow-listed.  A file that needs other pickled objects
is refused unless the caller opts in with ``allow_unsafe=True`` (or
``SEGMAN_ALLOW_UNSAFE_CHECKPOINTS=1``).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from timm.models import clean_state_dict
from torch import nn

__all__ = ["CheckpointError", "load_checkpoint_file", "save_checkpoint_file", "atomic_path", "checkpoints_newest_first",
           "newest_loadable",
           "extract_state_dict", "checkpoint_filter_fn",
           "load_encoder_checkpoint", "load_segmentor_checkpoint"]

logger = logging.getLogger(__name__)

CLASSIFIER_PREFIX = "classifier."
UNSAFE_ENV_VAR = "SEGMAN_ALLOW_UNSAFE_CHECKPOINTS"
LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:12]  # how pre-1.6 torch.save files begin
PathOrStateDict = Union[str, os.PathLike, Mapping[str, Any]]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read safely or does not match the model."""


def _safe_globals() -> list:
    """What ``weights_only`` may unpickle besides tensors: timm's ``args`` and mmcv's numpy meta."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [argparse.Namespace, np.ndarray, np.dtype, *dtype_classes, multiarray._reconstruct, multiarray.scalar,
            # files written under numpy 1.x name the module numpy.core
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar")]


def load_checkpoint_file(path: Union[str, os.PathLike], map_location: Any = "cpu",
                         allow_unsafe: Optional[bool] = None) -> Any:
    """``torch.load(weights_only=True)``, with timm's ``argparse.Namespace`` and numpy scalars/arrays
    (mmcv's ``meta``) allow-listed.

    Args:
        path: the checkpoint file.
        map_location: as for ``torch.load``.
        allow_unsafe: load with ``weights_only=False`` (full unpickling: only for trusted files).
            None reads the environment variable ``SEGMAN_ALLOW_UNSAFE_CHECKPOINTS`` (``1`` opts
            in), for tools that cannot pass arguments (mmcv's checkpoint loader).

    Raises:
        CheckpointError: the file needs other pickled objects (the message names them and the two
            ways to opt in), or it is not readable: truncated, empty or not written by torch.save.
    """
    if allow_unsafe is None:
        allow_unsafe = os.environ.get(UNSAFE_ENV_VAR, "0") == "1"
    try:
        if allow_unsafe:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(_safe_globals()):
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                is_zip = zipfile.is_zipfile(path)
                if not (is_zip or _is_legacy_torch_file(path)):
                    raise  # random bytes: reported as unreadable below
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path) if is_zip else []
                raise CheckpointError(
                    f"{os.fspath(path)!r} needs pickled Python objects that torch.load(weights_only=True) refuses "
                    f"({', '.join(unsafe) or 'see the cause above'}).  If you trust the file, pass allow_unsafe=True "
                    f"or set {UNSAFE_ENV_VAR}=1 (full unpickling can run arbitrary code).") from e
    except (CheckpointError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # truncated, empty, random bytes: torch's own message misleads (weights_only)
        if isinstance(e, pickle.UnpicklingError):
            detail = "its bytes are not what torch.save writes"
        elif isinstance(e, EOFError):
            detail = "the file is empty or ends early"
        else:
            detail = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}"
        raise CheckpointError(
            f"{os.fspath(path)!r} is not a readable checkpoint ({detail}); it is damaged "
            f"(e.g. a run killed while writing it, an interrupted copy) or was not written by torch.save") from e


def _is_legacy_torch_file(path: Union[str, os.PathLike]) -> bool:
    """Whether the file starts like torch.save's pre-1.6 format (a pickled magic number)."""
    with open(path, "rb") as f:
        return f.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; on success the file is flushed to disk and renamed
    over ``path`` (atomic on POSIX), on failure removed.  A kill at any moment leaves ``path`` either as
    it was or complete, never partial.  Temporaries are named ``.<name>.<random>.tmp``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself reaches the disk with the folder's entry
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint_file(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_path`: never leaves a partial file at ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def checkpoints_newest_first(folder: Union[str, os.PathLike], latest: str, numbered: str) -> list[str]:
    """The checkpoints of a training run, newest first: the file named ``latest`` if there is one, then
    the files whose whole name matches the regex ``numbered`` (its one group: the iteration or epoch),
    highest number first."""
    folder = os.fspath(folder)
    found = [(int(m.group(1)), os.path.join(folder, name)) for name in os.listdir(folder)
             if (m := re.fullmatch(numbered, name))]
    head = [os.path.join(folder, latest)] if os.path.isfile(os.path.join(folder, latest)) else []
    return head + [path for _, path in sorted(found, reverse=True)]


def newest_loadable(paths: Sequence[Union[str, os.PathLike]]) -> Optional[str]:
    """The first of ``paths`` (newest first) that :func:`load_checkpoint_file` reads; each one skipped
    is named in a warning with the reason.  None if none is readable."""
    for path in paths:
        try:
            load_checkpoint_file(path)
        except (CheckpointError, OSError) as e:
            warnings.warn(f"skipping checkpoint {os.fspath(path)}: {e}")
            continue
        return os.fspath(path)
    return None


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The weights inside a checkpoint dict, without ``module.`` / ``_orig_mod.`` prefixes.

    Prefers ``state_dict_ema`` (as the original segmentation backbone did), then ``state_dict``;
    a mapping with neither is taken to be a state_dict already.
    """
    for key in ("state_dict_ema", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    return clean_state_dict(dict(checkpoint))


def _drop_unused_classifier(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Remove ``classifier.*`` entries the model has no place for (absent or of another shape)."""
    target = model.state_dict()
    dropped = [k for k, v in state_dict.items()
               if k.startswith(CLASSIFIER_PREFIX) and (k not in target or target[k].shape != v.shape)]
    if dropped:
        logger.info("dropping %d classifier entries the model does not use: %s", len(dropped), ", ".join(dropped))
    return {k: v for k, v in state_dict.items() if k not in dropped}


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """timm ``pretrained_filter_fn``: unwrap an official ImageNet checkpoint for ``model``.

    The key names need no renaming.  Classifier entries the model cannot take (backbone form, or
    another class count) are dropped with one info log line.
    """
    return _drop_unused_classifier(extract_state_dict(state_dict), model)


def _load_checked(model: nn.Module, state_dict: Mapping[str, Any], strict: bool, what: str):
    """``model.load_state_dict`` that lists every missing, unexpected and mis-shaped key.

    With ``strict`` any mismatch raises :class:`CheckpointError`; otherwise the mismatches are
    logged as a warning and the matching entries are loaded.
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    mis_shaped = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state_dict.items() if k in target and v.shape != target[k].shape]
    problems = [f"{name} ({len(keys)}): {', '.join(keys)}"
                for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped))
                if keys]
    if problems:
        message = f"{what} does not match {type(model).__name__}:\n  " + "\n  ".join(problems)
        if strict:
            raise CheckpointError(message + "\nUse strict=False to load the matching entries only.")
        logger.warning(message)
    return model.load_state_dict({k: v for k, v in state_dict.items()
                                  if k not in target or v.shape == target[k].shape}, strict=False)


def _state_dict_from(checkpoint: PathOrStateDict, allow_unsafe: Optional[bool]) -> tuple[dict[str, Any], str]:
    if isinstance(checkpoint, Mapping):
        return extract_state_dict(checkpoint), "the checkpoint"
    return extract_state_dict(load_checkpoint_file(checkpoint, allow_unsafe=allow_unsafe)), repr(os.fspath(checkpoint))


def load_encoder_checkpoint(model: nn.Module, checkpoint: PathOrStateDict, strict: bool = True,
                            allow_unsafe: Optional[bool] = None):
    """Load an ImageNet encoder checkpoint into a :class:`SegMANEncoder` (either form).

    Args:
        model: the encoder.  In the backbone form the checkpoint's ``classifier.*`` keys are
            dropped (one info log line); in the classification form they are loaded.
        checkpoint: a file path, a checkpoint dict (``state_dict_ema`` preferred over
            ``state_dict``, ``module.`` prefixes removed) or a state_dict.
        strict: raise :class:`CheckpointError` listing every other missing, unexpected or
            mis-shaped key; ``strict=False`` loads what matches and logs the rest (e.g. to
            fine-tune from another variant).
        allow_unsafe: permit ``torch.load(weights_only=False)`` (see :func:`load_checkpoint_file`).

    Returns:
        ``(missing_keys, unexpected_keys)`` as from ``load_state_dict`` (mis-shaped keys count
        as missing).
    """
    state_dict, what = _state_dict_from(checkpoint, allow_unsafe)
    if not hasattr(model, "classifier"):
        state_dict = _drop_unused_classifier(state_dict, model)
    return _load_checked(model, state_dict, strict, what)


def load_segmentor_checkpoint(model: nn.Module, checkpoint: PathOrStateDict, strict: bool = True,
                              allow_unsafe: Optional[bool] = None):
    """Load an mmseg segmentation checkpoint (``backbone.*``, ``decode_head.*``) into a segmentor.

    Args, Returns: as :func:`load_encoder_checkpoint` (nothing is dropped here).
    """
    state_dict, what = _state_dict_from(checkpoint, allow_unsafe)
    return _load_checked(model, state_dict, strict, what)
