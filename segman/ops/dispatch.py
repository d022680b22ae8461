"""Backend selection shared by every op in ``segman.ops``.

Each public op owns an ordered list of :class:`Backend` entries (fastest first).  A backend
declares a ``can_run`` predicate that returns ``None`` when it supports the inputs, or a short
reason when it does not; for a backend with kernels, :func:`kernel_can_run` builds it from the
checks that live with the backend (its package's ``unavailable``, its module's ``can_run``).
With no backend forced, the first one that can run is used and the reasons for skipping the
others are logged at DEBUG level (``logging.getLogger("segman.ops")``).  A forced backend that
cannot run raises :class:`BackendError` with its reason: there is no silent fallback.

The lists start with an ``onnx`` backend (:func:`exporting_to_onnx`) that runs only while
``torch.onnx.export`` traces, so that exported graphs hold standard operators instead of custom ops
(``ss2d_scan`` needs none: its first backend calls the other ops).

A backend is forced, in order of precedence, by
  1. the op's ``backend=`` argument,
  2. :func:`force_backend` (a context manager, restored on exit),
  3. the environment variable ``SEGMAN_OPS_BACKEND``.
The override is either one name for every op (``"torch"``) or per op
(``"neighborhood_attention_2d=triton,selective_scan=cuda"``).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch

from .library import KERNEL_MODULES

logger = logging.getLogger("segman.ops")

ENV_VAR = "SEGMAN_OPS_BACKEND"
ALL_OPS = ("selective_scan", "cross_scan", "cross_merge", "ss2d_scan", "neighborhood_attention_2d")

_override: Optional[str] = None


class BackendError(RuntimeError):
    """A forced backend is unknown or cannot run the given inputs."""


@dataclass(frozen=True)
class Backend:
    """One implementation of an op.

    ``can_run(*args, **kwargs)`` returns ``None`` if the backend supports the call, else a reason.
    ``run(*args, **kwargs)`` computes the op, through the op's ``torch.library`` custom op
    (:mod:`segman.ops.library`), which imports optional dependencies (triton, the CUDA extension,
    natten) only when the backend runs.
    """

    name: str
    can_run: Callable[..., Optional[str]]
    run: Callable[..., object]


def runs_anywhere(*args, **kwargs) -> Optional[str]:
    """``can_run`` of backends that take every validated input (the torch references)."""
    return None


def exporting_to_onnx(*args, **kwargs) -> Optional[str]:
    """``can_run`` of the ``onnx`` backends: plain tensor ops with no custom op and nothing written in place,
    which ``torch.onnx.export`` turns into standard ONNX operators; they run only while it traces."""
    return None if torch.onnx.is_in_onnx_export() else "runs only while torch.onnx.export traces the model"


def kernel_can_run(op: str, backend: str) -> Callable[..., Optional[str]]:
    """``can_run`` of ``backend`` for ``op``, from the checks that live with the backend.

    The kernels of ``op`` on ``backend`` live in ``segman.ops.<package>.<module>``
    (:data:`segman.ops.library.KERNEL_MODULES`).  The package's ``unavailable(*args)`` answers first, without
    importing the optional dependency (triton, the CUDA extension); then the module, loaded as an attribute of its
    package (which torch.compile traces, unlike ``importlib``), checks the inputs with ``can_run(*args)``.
    """
    package_name, module = KERNEL_MODULES[op][backend].split(".")
    package = importlib.import_module(f"{__package__}.{package_name}")

    def can_run(*args, **kwargs) -> Optional[str]:
        reason = package.unavailable(*args, **kwargs)
        if reason is None:
            reason = getattr(package, module).can_run(*args, **kwargs)
        return reason

    can_run.__qualname__ = f"kernel_can_run({op!r}, {backend!r})"
    return can_run


def _parse(spec: Optional[str], op: str) -> Optional[str]:
    """The backend named for ``op`` by an override string, or None; a malformed string raises."""
    if not spec:
        return None
    spec = spec.strip()
    if "=" not in spec:
        return spec
    named = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ALL_OPS or not value.strip():
            raise BackendError(
                f"cannot parse backend override {spec!r}: expected 'NAME' or 'OP=NAME,...' "
                f"with OP in {ALL_OPS}")
        named[key] = value.strip()
    return named.get(op)


@torch.compiler.assume_constant_result
def _environment_override() -> Optional[str]:
    """``SEGMAN_OPS_BACKEND``; a compiled model keeps the value it was traced with."""
    return os.environ.get(ENV_VAR)


def forced_backend(op: str) -> Optional[str]:
    """The backend forced for ``op`` by :func:`force_backend` or ``SEGMAN_OPS_BACKEND``."""
    if _override is not None:
        return _parse(_override, op)
    return _parse(_environment_override(), op)


@contextlib.contextmanager
def force_backend(spec: Optional[str]) -> Iterator[None]:
    """Force a backend inside a ``with`` block, e.g. ``force_backend("torch")``.

    ``spec`` is one backend name for all ops or ``"op=name,op=name"``; ``None`` restores
    automatic selection (ignoring ``SEGMAN_OPS_BACKEND``) inside the block.
    """
    global _override
    for op in ALL_OPS:  # validate the syntax early
        _parse(spec, op)
    previous = _override
    _override = spec if spec is not None else ""
    try:
        yield
    finally:
        _override = previous


def select(op: str, backends: Sequence[Backend], requested: Optional[str], *args, **kwargs) -> Backend:
    """Pick the backend for one call of ``op`` (see the module docstring)."""
    name = requested or forced_backend(op)
    if name:
        for backend in backends:
            if backend.name == name:
                reason = backend.can_run(*args, **kwargs)
                if reason is not None:
                    raise BackendError(f"{op}: backend {name!r} cannot run these inputs: {reason}")
                return backend
        raise BackendError(f"{op}: unknown backend {name!r}; choose one of {[b.name for b in backends]}")
    reasons = []
    log = not torch.compiler.is_compiling()  # selection is traced under torch.compile: no logging there
    for backend in backends:
        reason = backend.can_run(*args, **kwargs)
        if reason is None:
            if log:
                logger.debug("%s: using backend %r", op, backend.name)
            return backend
        reasons.append(f"{backend.name}: {reason}")
        if log:
            logger.debug("%s: skipping backend %r: %s", op, backend.name, reason)
    raise BackendError(f"{op}: no backend can run these inputs ({'; '.join(reasons)})")
