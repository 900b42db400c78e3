"""How close a decoder's frames are to the full VAE's: PSNR and SSIM on uint8 frames.

PSNR is over all pixels and channels of a step (one mean squared error, peak 255). SSIM is the usual
one (Wang et al. 2004: an 11x11 Gaussian window of sigma 1.5, K1 0.01, K2 0.03, luminance, contrast
and structure together), per colour channel and frame, averaged; it is written here (a handful of
lines on ``conv2d``) rather than taken from an image library this project does not otherwise need.
"""
from __future__ import annotations

import math

import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two arrays of the same shape (uint8 frames: ``peak`` 255; ``[-1, 1]`` clips: 2)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two ``[F, H, W, 3]`` uint8 videos (per frame and channel, Gaussian window; frames
    smaller than the window use a window of their size)."""
    import torch
    import torch.nn.functional as F

    if a.shape != b.shape:
        raise ValueError(f"frames of different shapes: {a.shape} and {b.shape}")
    x = torch.tensor(np.asarray(a), dtype=torch.float64).permute(0, 3, 1, 2).reshape(-1, 1, *a.shape[1:3])
    y = torch.tensor(np.asarray(b), dtype=torch.float64).permute(0, 3, 1, 2).reshape(-1, 1, *b.shape[1:3])
    size = min(SSIM_WINDOW, a.shape[1], a.shape[2])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    column, row = g.view(1, 1, size, 1), g.view(1, 1, 1, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        # the 2-D Gaussian window is the outer product of g with itself: a column pass then a row pass
        # give the same blur in 2 x 11 taps instead of 121 (a distill measures SSIM at every check)
        return F.conv2d(F.conv2d(t, column), row)

    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(index.mean())
