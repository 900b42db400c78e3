"""A reference TAEHV-family decoder for the parity tests, written independently of
``latent_decoder.tiny`` (which it never imports): plain functional torch in float64, one frame at a
time in causal order, every shape read off the weights themselves, as the published description
(madebyollin/taehv, ``taehv.py``: the decoder ``nn.Sequential`` and its sequential decode) lays out:

    0 soft clamp 3*tanh(x/3)   1 conv 3x3   2 ReLU
    per stage s (base b = 3 + 6s): b..b+2 memory blocks, b+3 nearest 2x upsample, b+4 TGrow, b+5 conv 3x3
    21 ReLU   22 conv 3x3 to 3*p*p channels, then pixel shuffle by p, clamp to [0, 1]

Also random weights in the published key layout (``decoder.<index>...``, encoder tensors beside them
as in the published files), so the tests can save real checkpoint files.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEMORY = {3, 4, 5, 9, 10, 11, 15, 16, 17}
UPSAMPLE = {6, 12, 18}
GROW = {7, 13, 19}
RELU = {2, 21}
LAST = 22


def _conv(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    weight = sd[f"{name}.weight"]
    return F.conv2d(x, weight, sd.get(f"{name}.bias"), padding=weight.shape[-1] // 2,
                    groups=x.shape[1] // weight.shape[1])


def _memory_block(sd: dict[str, torch.Tensor], i: int, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
    h = torch.cat([x, past], 1)
    names = [f"{i}.conv.{j}" for j in (0, 2, 4, 6) if f"{i}.conv.{j}.weight" in sd]
    for n, name in enumerate(names):
        h = _conv(sd, name, h)
        if n < len(names) - 1:
            h = torch.relu(h)
    return torch.relu(h + x)


def _run(sd: dict[str, torch.Tensor], x: torch.Tensor, i: int, memory: dict[int, torch.Tensor],
         out: list[torch.Tensor]) -> None:
    """Layer ``i`` onwards for one frame ``x`` ([N, C, H, W]); finished frames go to ``out``."""
    while i <= LAST:
        if i == 0:
            x = 3 * torch.tanh(x / 3)
        elif i in RELU:
            x = torch.relu(x)
        elif i in MEMORY:
            past = memory.get(i, torch.zeros_like(x))
            memory[i] = x
            x = _memory_block(sd, i, x, past)
        elif i in UPSAMPLE:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif i in GROW:
            grown = F.conv2d(x, sd[f"{i}.conv.weight"])
            c = x.shape[1]
            for j in range(grown.shape[1] // c):
                _run(sd, grown[:, j * c:(j + 1) * c], i + 1, memory, out)
            return
        else:
            x = _conv(sd, str(i), x)
        i += 1
    out.append(x)


def reference_decode(state: dict[str, torch.Tensor], latents: torch.Tensor, cogvideox: bool = False,
                     segment: int | None = None) -> torch.Tensor:
    """``[1, T, C, h, w]`` latents -> ``[F, 3, H, W]`` float64 in [0, 1], trimmed as published: the first
    ``t_upscale - 1`` frames dropped, except for CogVideoX with an even ``T``; with ``segment``, dropped
    at the start of every ``segment`` latent frames (MiniMax H3's pieces, as stable-diffusion.cpp reads
    ``taeh3``)."""
    sd = {k[len("decoder."):]: v.double() for k, v in state.items() if k.startswith("decoder.")}
    memory: dict[int, torch.Tensor] = {}
    raw: list[torch.Tensor] = []
    for t in range(latents.shape[1]):
        _run(sd, latents[:, t].double(), 0, memory, raw)
    patch = math.isqrt(sd[f"{LAST}.weight"].shape[0] // 3)
    frames = [F.pixel_shuffle(f, patch)[0].clamp(0, 1) for f in raw]
    t_up = len(raw) // latents.shape[1]
    if segment is not None:
        per = segment * t_up
        frames = [f for start in range(0, len(frames), per) for f in frames[start + t_up - 1:start + per]]
    elif not (cogvideox and latents.shape[1] % 2 == 0):
        frames = frames[t_up - 1:]
    return torch.stack(frames)


def reference_uint8(frames: torch.Tensor) -> torch.Tensor:
    """``[F, 3, H, W]`` in [0, 1] -> ``[F, H, W, 3]`` uint8 by rounding."""
    return (frames * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- random published-layout weights


def _normal(gen: torch.Generator, *shape: int, gain: float = 1.0) -> torch.Tensor:
    fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else shape[0]
    return torch.randn(*shape, generator=gen) * gain / math.sqrt(fan_in)


def random_state_dict(latent_channels: int = 4, patch: int = 1, widths: tuple[int, int, int, int] = (16, 12, 8, 8),
                      strides: tuple[int, int, int] = (1, 2, 2), wide: bool = False,
                      groups: tuple[int, int, int] = (2, 2, 2), seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights in the published key layout, scaled so that the frames spread over
    [0, 1] instead of saturating. ``wide``: the larger variants' 1x1 / grouped 3x3 memory blocks."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {
        # the encoder half of a published file: ignored by decoders, present in the files
        "encoder.0.weight": _normal(gen, 64, 3 * patch * patch, 3, 3),
        "encoder.0.bias": torch.zeros(64),
        "decoder.1.weight": _normal(gen, widths[0], latent_channels, 3, 3, gain=1.4),
        "decoder.1.bias": torch.randn(widths[0], generator=gen) * 0.1,
    }
    for stage in range(3):
        w, base = widths[stage], 3 + 6 * stage
        for block in range(3):
            key = f"decoder.{base + block}.conv"
            if wide:
                g = groups[stage]
                shapes = {0: (w, 2 * w, 1, 1), 2: (w, w // g, 3, 3), 4: (w, w, 1, 1), 6: (w, w // g, 3, 3)}
            else:
                shapes = {0: (w, 2 * w, 3, 3), 2: (w, w, 3, 3), 4: (w, w, 3, 3)}
            for j, shape in shapes.items():
                last = j == max(shapes)
                sd[f"{key}.{j}.weight"] = _normal(gen, *shape, gain=0.5 if last else 1.4)
                sd[f"{key}.{j}.bias"] = torch.randn(w, generator=gen) * 0.05
        sd[f"decoder.{base + 4}.conv.weight"] = _normal(gen, w * strides[stage], w, 1, 1, gain=1.4)
        sd[f"decoder.{base + 5}.weight"] = _normal(gen, widths[stage + 1], w, 3, 3, gain=1.4)
    sd[f"decoder.{LAST}.weight"] = _normal(gen, 3 * patch * patch, widths[3], 3, 3, gain=0.15)
    sd[f"decoder.{LAST}.bias"] = torch.full((3 * patch * patch,), 0.5)
    return sd
