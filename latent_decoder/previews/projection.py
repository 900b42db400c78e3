"""The projection at latent resolution, and its expansion to the size of the decoded video.

Projection is one matmul over every latent pixel of every latent frame (ComfyUI previews only the
first frame). It runs at latent resolution, 64x fewer pixels than the video for an 8x VAE; the
expansion to the video's frames and size is a nearest-neighbour repeat done only for encoding.
"""
from __future__ import annotations

import numpy as np

from .factors import PreviewMap


def copy_as_float32(out: np.ndarray, array: np.ndarray) -> None:
    """``out[...] = array`` in float32. numpy converts float16 element by element (~1.5 ms for a
    61-frame 848x480 Wan latent), torch with SIMD (~0.4 ms): the difference between ~350 and
    ~550 steps/s on one core."""
    if array.dtype == np.float16:
        import torch

        torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(array)))
    else:
        np.copyto(out, array, casting="unsafe")


def project(grid: np.ndarray, preview: PreviewMap) -> np.ndarray:
    """``[1, C, T, H, W]`` model-space latent -> ``[T, H, W, 3]`` uint8:
    ``round(clip((x @ factors + bias + 1) / 2, 0, 1) * 255)`` on every latent frame.

    One matmul does it all: a row of ones under the channels carries the bias (adding a 3-wide bias
    row by row costs more than the matmul), the colour scaling is folded into the weights, and the
    truncating cast after the clip rounds (``+ 0.5``)."""
    _, channels, t, h, w = grid.shape
    x = np.empty((channels + 1, t * h * w), np.float32)
    copy_as_float32(x[:channels], grid[0].reshape(channels, -1))
    x[channels] = 1.0
    weights = np.concatenate([preview.factors, preview.bias[None] + 1.0]).astype(np.float32) * np.float32(127.5)
    weights[channels] += np.float32(0.5)
    rgb = x.T @ weights
    np.clip(rgb, 0.0, 255.499, out=rgb)
    return rgb.astype(np.uint8).reshape(t, h, w, 3)


def frame_sources(latent_frames: int, frames: int, factor: int) -> np.ndarray:
    """For each of ``frames`` video frames, the latent frame it comes from: ``factor`` frames per
    latent frame, the first latent frame only once for causal VAEs (``(T-1)*factor+1`` frames)."""
    index = np.arange(frames)
    if frames == latent_frames * factor:  # not causal (CogVideoX with an even frame count)
        return index // factor
    if frames == (latent_frames - 1) * factor + 1:
        return (index + factor - 1) // factor
    return np.minimum(index * latent_frames // max(frames, 1), latent_frames - 1)  # anything else: evenly


def expand(small: np.ndarray, frames: int, factor: int, height: int, width: int) -> np.ndarray:
    """``[T, h, w, 3]`` -> ``[frames, height, width, 3]`` by repeating latent frames and pixels."""
    t, h, w, _ = small.shape
    if height % h == 0 and width % w == 0:  # whole pixels per latent pixel (scale 1): plain repeats
        out = np.repeat(np.repeat(small, width // w, axis=2), height // h, axis=1)
    else:  # the narrow axis first: the element-wise gather runs on the smallest array
        out = np.take(small, np.arange(width) * w // width, axis=2)
        out = np.take(out, np.arange(height) * h // height, axis=1)
    return np.take(out, frame_sources(t, frames, factor), axis=0)  # whole frames: memcpy speed
