"""Reference cross-scan / cross-merge: pure index permutations, exact in every dtype.

Autograd of these views is exact, and the backward of one is the other.
"""
import torch


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, 4, C, L)``."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor) -> torch.Tensor:
    """``(B, 4, C, H, W)`` → ``(B, C, L)``."""
    b, _, c, h, w = y.shape
    seq = y.flatten(3)                                            # (B, 4, C, L)
    rows = seq[:, 0] + seq[:, 2].flip(-1)                         # row-major directions
    cols = seq[:, 1] + seq[:, 3].flip(-1)                         # column-major: index w*H + h
    return rows + cols.view(b, c, w, h).transpose(2, 3).reshape(b, c, h * w)
