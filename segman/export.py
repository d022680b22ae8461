"""ONNX export of a segmentation model, and the exported model run with onnxruntime.

    from segman.export import export_onnx, verify_onnx
    model = SegMAN("t", num_classes=150)                       # trained weights loaded
    export_onnx(model, "segman_t.onnx", shape=(512, 512), method="encode_decode", dynamic_batch=True)
    verify_onnx(model, "segman_t.onnx", method="encode_decode")  # max error relative to PyTorch's largest logit

The exported graph maps a normalised image ``img`` ``(N, 3, H, W)`` float32 to ``logits``
``(N, num_classes, H, W)`` float32: ``method`` of the model, which for :class:`segman.models.SegMAN` is
``encode_decode`` (logits resized bilinearly to the input) and for an mmseg segmentor ``forward_dummy``.
``H`` and ``W`` are fixed at export (the window tilings of neighborhood attention and the number of scan
steps follow from them); the batch size may be left free.

While ``torch.onnx.export`` traces, every op of :mod:`segman.ops` runs its ``onnx`` backend: plain tensor
ops that become standard ONNX operators (the selective scan unrolled in short chunks: a few hundred
steps on slices of the states instead of a loop over the sequence), so the file needs no custom
operator.  ``onnx``, ``onnxscript`` and ``onnxruntime`` are needed here, not by the rest of the
library (``pip install -e ".[deploy]"``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "img", "logits"
TRACE_BATCH = 2  # a free batch is traced with 2: a batch of 1 would be specialised into the graph


@contextlib.contextmanager
def _evaluating(model: nn.Module, method: str) -> Iterator[tuple[nn.Module, torch.device]]:
    """``(model.<method> as a module in eval mode, the model's device)`` under ``no_grad``; the model's
    train/eval mode is restored on exit."""
    was_training = model.training
    try:
        with torch.no_grad():
            yield _Method(model, method).eval(), next(iter(model.parameters()), torch.empty(0)).device
    finally:
        model.train(was_training)


class _Method(nn.Module):
    """``model.<method>(img)`` as a module's forward, which is what the exporter traces."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        if not callable(getattr(model, method, None)):
            raise ValueError(f"{type(model).__name__} has no method {method!r} to export; "
                             f"SegMAN exports 'encode_decode', an mmseg segmentor 'forward_dummy'")
        self.model, self.method = model, method

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(img)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ImportError(f"ONNX export and checking need {module!r}: pip install -e \".[deploy]\" "
                          f"(onnx, onnxscript, onnxruntime)") from None


def export_onnx(model: nn.Module, output_file: str, shape: Sequence[int] = (512, 512), method: str = "forward",
                dynamic_batch: bool = False, batch: int = 1, opset: int = OPSET) -> str:
    """Write ``model.<method>`` for ``(batch, 3, *shape)`` images to ``output_file``; returns its path.

    The model is exported in eval mode on its own device (its mode is restored afterwards).  With
    ``dynamic_batch`` the file takes any batch size and ``batch`` is ignored.
    """
    _require("onnxscript")
    height, width = (int(s) for s in shape)
    if dynamic_batch:
        batch = TRACE_BATCH
    dynamic_shapes = {"img": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with _evaluating(model, method) as (traced, device):
        img = torch.randn(batch, 3, height, width, device=device)
        program = torch.onnx.export(traced, (img,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
                                    optimize=False)
    _fold_constants(program.model)
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    program.save(output_file)
    return output_file


def _fold_constants(model) -> None:
    """Constant folding and dead-node removal, in place, instead of the exporter's full optimisation:
    its pattern rewrites take twice as long as the rest of the export and gain onnxruntime, which fuses
    on loading, about 4% (SegMAN-T at 512²)."""
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(model)
    onnxscript.optimizer.remove_unused_nodes(model)


class OnnxModel:
    """An exported file loaded in onnxruntime: ``OnnxModel(path)(img) -> logits`` (numpy float32).
    ``providers``: onnxruntime's execution providers (default the CPU); ``threads``: its intra-op threads."""

    def __init__(self, path: str, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None) -> None:
        _require("onnxruntime")
        import onnxruntime

        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file '{path}' does not exist")
        self.path = path
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.runtime = onnxruntime.InferenceSession(path, options,
                                                    providers=list(providers or ["CPUExecutionProvider"]))
        (inp,), (out,) = self.runtime.get_inputs(), self.runtime.get_outputs()
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(inp.shape)  # (batch or its symbol, 3, H, W)
        self.num_classes = out.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        """The ``(H, W)`` the file was exported for."""
        return int(self.input_shape[2]), int(self.input_shape[3])

    def __call__(self, img: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(N, 3, H, W)`` → ``(N, num_classes, H, W)`` float32."""
        if isinstance(img, torch.Tensor):
            img = img.detach().cpu().numpy()
        img = np.ascontiguousarray(img, dtype=np.float32)
        expected = self.input_shape
        if img.ndim != 4 or tuple(img.shape[1:]) != tuple(expected[1:]):
            raise ValueError(f"{self.path} takes images of shape {expected} (N, 3, H, W), got {img.shape}: "
                             f"resize the input, or export again with --shape H W for this size")
        if isinstance(expected[0], int) and img.shape[0] != expected[0]:
            raise ValueError(f"{self.path} was exported for a batch of {expected[0]}, got {img.shape[0]} images: "
                             f"export again with --dynamic-batch, or pass {expected[0]} at a time")
        return self.runtime.run([self.output_name], {self.input_name: img})[0]


def verify_onnx(model: nn.Module, path: str, method: str = "forward", img: Optional[torch.Tensor] = None,
                rtol: float = 1e-4) -> float:
    """Run the exported file and the model on ``img`` (default: a seeded random batch of the exported
    size) and return the largest difference relative to the largest PyTorch logit; raise
    ``AssertionError`` above ``rtol``."""
    onnx_model = OnnxModel(path)
    if img is None:
        batch = onnx_model.input_shape[0] if isinstance(onnx_model.input_shape[0], int) else TRACE_BATCH + 1
        img = torch.randn(batch, 3, *onnx_model.size, generator=torch.Generator().manual_seed(0))
    with _evaluating(model, method) as (forward, device):
        reference = forward(img.to(device)).float().cpu().numpy()
    error = float(np.abs(onnx_model(img) - reference).max() / max(np.abs(reference).max(), 1e-30))
    if error > rtol:
        raise AssertionError(f"{path}: onnxruntime differs from PyTorch by {error:.2e} of the largest logit "
                             f"(tolerance {rtol:.0e})")
    return error
