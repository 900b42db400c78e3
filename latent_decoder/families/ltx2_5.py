"""LTX-2.5 (``LTX25ModularPipeline``) and its diffusion decoder (``LTX2VideoDiffusionDecoderModel``).

Mirrors ``modular_pipelines/ltx2/decoders.py`` (``LTX2DiffusionVaeDecoderStep``, after
``LTX2TrimConditionTokensStep``): the loop's packed tokens (as LTX-2's, appended condition tokens
dropped) are unpacked, cast to the pipeline's dtype, de-normalised with ``latents * latents_std /
scaling_factor + latents_mean`` (the VAE's statistics, else the decoder's own buffers, the same
LTX-2 statistics) and handed to the diffusion decoder, which is itself a small diffusion model: it
denoises pixels from noise conditioned on the latent, in ``decoder_num_inference_steps`` passes (1
in the release), drawing that noise from the pipeline's generator after the loop, a state no
experiment stores: here it comes from a fixed seed (reproducible, the same kind of noise, not the
same draw). It fits the worker contract (one model on one device, a latent in, frames out), but
costs more than a VAE decode and its frames cannot match a run's exactly.

LTX-2.5's latents are in LTX-2's latent space: with the model folder's ``vae/`` (the default) they
decode with the LTX-2 VAE's convolutional decoder instead (rule ``ltx2.5``); ``--vae-subfolder
diffusion_decoder`` picks the pipeline's own decoder.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .base import DecodeContext
from .ltx2 import LTX2_CONDITIONED
from .ltx_video import NOISE_SEED, buffer_denormalize

if TYPE_CHECKING:
    import torch

DIFFUSION_DECODER = "LTX2VideoDiffusionDecoderModel"


def cost(decoder: Any) -> str:
    steps = decoder.config.decoder_num_inference_steps
    return (f"a diffusion model, not a VAE: each decode runs {steps} denoising pass(es) of the decoder "
            f"(decoder_num_inference_steps), each about one VAE decode's work or more; the memory estimate "
            f"below is a VAE's")


def diffusion_decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``diffusion_decoder.decode(latents, generator=...)``, its noise from ``NOISE_SEED`` (a CPU generator:
    the same draw on every device)."""
    import torch

    generator = torch.Generator().manual_seed(NOISE_SEED)
    return ctx.vae.decode(z, generator=generator, return_dict=False)[0]


LTX2_5 = replace(
    LTX2_CONDITIONED, name="ltx2.5", label="LTX-2.5 on the LTX-2 VAE",
    mirrors="diffusers.LTX25ModularPipeline's latents (modular_pipelines/ltx2) decoded with LTX2Pipeline's VAE lines",
    pipelines=("LTX25ModularPipeline",),
    model_ids=(),
    note="LTX-2.5 decodes with its diffusion decoder (--vae-subfolder diffusion_decoder: rule ltx2.5-diffusion-decoder); "
         "this decodes the same latents with the LTX-2 VAE's convolutional decoder",
)

LTX2_5_DIFFUSION_DECODER = replace(
    LTX2_CONDITIONED, name="ltx2.5-diffusion-decoder", label="LTX-2.5 diffusion decoder",
    mirrors="diffusers.LTX25ModularPipeline (modular_pipelines/ltx2/decoders.py: LTX2DiffusionVaeDecoderStep), "
            "LTX2VideoDiffusionDecodePipeline",
    vae_classes=(DIFFUSION_DECODER,),
    pipelines=("LTX25ModularPipeline", "LTX2VideoDiffusionDecodePipeline"),
    denormalize=buffer_denormalize,
    decode=diffusion_decode,
    reads=(),
    model_ids=(),
    cost=cost,
    note="its noise comes from a fixed seed: reproducible, the same kind of noise, not the run's own draw",
)
