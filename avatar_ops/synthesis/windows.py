"""Long frame sequences in overlapping windows, blended back without a jump at the seams."""

from __future__ import annotations

import torch
from torch import Tensor


def window_starts(total: int, window: int, overlap: int) -> list[int]:
    """Start frames of windows of ``window`` frames covering ``total`` frames, consecutive
    windows sharing ``overlap`` frames (the last window is aligned to the end)."""
    if window < 1:
        raise ValueError(f"`window` must be >= 1, got {window}.")
    if not 0 <= overlap < window:
        raise ValueError(f"`overlap` must be in [0, window) = [0, {window}), got {overlap}.")
    if total <= window:
        return [0]
    starts = list(range(0, total - window, window - overlap))
    starts.append(total - window)
    return sorted(set(starts))


def blend_windows(windows: list[Tensor], starts: list[int], total: int) -> Tensor:
    """Average overlapping windows ([W_i, ...] each) into [total, ...] with weights that ramp
    linearly across each overlap, so the result moves gradually from one window to the next."""
    if len(windows) != len(starts):
        raise ValueError(f"{len(windows)} windows need {len(windows)} starts, got {len(starts)}.")
    out = torch.zeros((total, *windows[0].shape[1:]), dtype=windows[0].dtype, device=windows[0].device)
    weight = torch.zeros(total, dtype=windows[0].dtype, device=windows[0].device)
    for i, (win, start) in enumerate(zip(windows, starts)):
        n = win.shape[0]
        w = torch.ones(n, dtype=win.dtype, device=win.device)
        if i > 0:  # ramp up over the frames shared with the previous window
            shared = max(0, starts[i - 1] + windows[i - 1].shape[0] - start)
            w[:shared] = torch.arange(1, shared + 1, dtype=win.dtype, device=win.device) / (shared + 1)
        if i + 1 < len(windows):  # ramp down over the frames shared with the next window
            shared = max(0, start + n - starts[i + 1])
            if shared:
                w[n - shared :] = torch.minimum(w[n - shared :], torch.arange(shared, 0, -1, dtype=win.dtype, device=win.device) / (shared + 1))
        out[start : start + n] += win * w.view(-1, *([1] * (win.ndim - 1)))
        weight[start : start + n] += w
    if (weight <= 0).any():
        raise ValueError("the windows leave frames uncovered.")
    return out / weight.view(-1, *([1] * (out.ndim - 1)))
