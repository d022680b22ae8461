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
import logging
import os
import pickle
from typing import Any, Mapping, Optional, Union

import torch
from timm.models import clean_state_dict
from torch import nn

__all__ = ["CheckpointError", "load_checkpoint_file", "extract_state_dict", "checkpoint_filter_fn",
           "load_encoder_checkpoint", "load_segmentor_checkpoint"]

logger = logging.getLogger(__name__)

CLASSIFIER_PREFIX = "classifier."
UNSAFE_ENV_VAR = "SEGMAN_ALLOW_UNSAFE_CHECKPOINTS"
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
        CheckpointError: the file needs other pickled objects; the message names them and the
            two ways to opt in.
    """
    if allow_unsafe is None:
        allow_unsafe = os.environ.get(UNSAFE_ENV_VAR, "0") == "1"
    if allow_unsafe:
        return torch.load(path, map_location=map_location, weights_only=False)
    with torch.serialization.safe_globals(_safe_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            raise CheckpointError(
                f"{os.fspath(path)!r} needs pickled Python objects that torch.load(weights_only=True) refuses "
                f"({', '.join(unsafe) or 'see the cause above'}).  If you trust the file, pass allow_unsafe=True "
                f"or set {UNSAFE_ENV_VAR}=1 (full unpickling can run arbitrary code).") from e


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
