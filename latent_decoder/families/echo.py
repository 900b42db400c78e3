"""Echo (the modular ``EchoModularPipeline``; ``AutoencoderKLLTX2Video``, LTX-2's VAE).

Mirrors ``modular_pipelines/echo/decoders.py`` (``EchoVaeDecoderStep``, after ``EchoUnpackLatentsStep``):
the loop's packed tokens (memory images are concatenated into the transformer's input only) are
unpacked as LTX-2's; then, unlike LTX2Pipeline, nothing is cast first: the decode noise mix
(timestep-conditioned VAEs) and ``latents * latents_std / scaling_factor + latents_mean`` run in
the loop's float32, the cast comes after, and the decode timestep stays float32.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .base import DecodeContext
from .ltx2 import LTX2
from .ltx_video import _timestep

if TYPE_CHECKING:
    import torch


def decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``vae.decode(latents, timestep)`` with the timestep in float32, or ``None`` without timestep conditioning."""
    import torch

    timestep = None
    if ctx.config.timestep_conditioning:
        timestep = torch.tensor([_timestep(ctx)] * z.shape[0], device=z.device, dtype=torch.float32)
    return ctx.vae.decode(z, timestep, return_dict=False)[0]


ECHO = replace(
    LTX2, name="echo", label="Echo",
    mirrors="diffusers.EchoModularPipeline (modular_pipelines/echo/decoders.py: EchoVaeDecoderStep)",
    pipelines=("EchoModularPipeline",),
    cast_first=False,
    decode=decode,
    model_ids=(),
)
