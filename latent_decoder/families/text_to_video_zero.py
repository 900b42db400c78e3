"""Text2Video-Zero, the deprecated zero-shot pipelines on Stable Diffusion's ``AutoencoderKL``.

``deprecated/text_to_video_synthesis/pipeline_text_to_video_zero.py`` (``TextToVideoZeroPipeline``)
runs Stable Diffusion's loop with the video's frames in the batch. Its legacy ``callback(step, t,
latents)`` hands the loop's latents frames first, ``[F, C, H, W]`` in the UNet's dtype: during the
first two backward passes only the first frame (``[1, C, H, W]``, one frame), in the last all
``video_length`` frames. ``decode_latents`` multiplies by ``1 / scaling_factor`` and decodes every
frame in one call.

``pipeline_text_to_video_zero_sdxl.py`` (``TextToVideoZeroSDXLPipeline``) decodes after its loop with
SDXL's ``needs_upcasting`` (a float16 VAE whose config says ``force_upcast``: the whole VAE to float32,
``upcast_vae``, the latents cast to ``post_quant_conv``'s dtype, the VAE back to float16 after),
``vae.decode(latents / scaling_factor)`` (a division, not AnimateDiff's product) on every frame at once.

Both are usually run on a plain Stable Diffusion folder, whose ``model_index.json`` names
``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (AnimateDiff's rules): give
``--family text-to-video-zero`` (or ``-sdxl``) there.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..latents import BTCHW
from .animatediff import needs_upcasting, upcast_decode
from .base import DecodeContext, PreviewSpace
from .image_vae import TAESD, TAESDXL, chunked
from .text_to_video_sd import I2VGEN_XL

if TYPE_CHECKING:
    import torch

# SD 1.5's and SDXL's latent spaces (the factors of ``sd1.5`` and ``sdxl``) in the frames-first layout
ZERO_SPACE = PreviewSpace("text-to-video-zero", "Text2Video-Zero (SD 1.x/2.x)", "AutoencoderKL", BTCHW, 4, 1, 8)
ZERO_SDXL_SPACE = PreviewSpace("text-to-video-zero-sdxl", "Text2Video-Zero (SDXL)", "AutoencoderKL", BTCHW, 4, 1, 8)

_NOTE = ("the legacy callback's latents are the video's frames in the batch, [F, C, H, W] (the first two "
         "backward passes: the first frame only, one frame)")


def _divided_by_scaling_factor(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents.to(post_quant_conv's dtype)`` (float32 once upcast), then ``latents / scaling_factor``."""
    return (z.float() if needs_upcasting(ctx) else z) / ctx.config.scaling_factor


# I2VGen-XL's frames-first reading and scaling, all frames in one decode call
TEXT_TO_VIDEO_ZERO = replace(
    I2VGEN_XL, name="text-to-video-zero", label="Text2Video-Zero",
    mirrors="diffusers.TextToVideoZeroPipeline (pipelines/deprecated/text_to_video_synthesis/"
            "pipeline_text_to_video_zero.py: decode_latents)",
    pipelines=("TextToVideoZeroPipeline",),
    decode=chunked(None),
    note=_NOTE,
    previews=(ZERO_SPACE,),
    model_ids=("text2video-zero", "text-to-video-zero"),
    tiny=(TAESD,),
)

TEXT_TO_VIDEO_ZERO_SDXL = replace(
    TEXT_TO_VIDEO_ZERO, name="text-to-video-zero-sdxl", label="Text2Video-Zero SDXL",
    mirrors="diffusers.TextToVideoZeroSDXLPipeline (pipelines/deprecated/text_to_video_synthesis/"
            "pipeline_text_to_video_zero_sdxl.py: __call__'s decode lines)",
    pipelines=("TextToVideoZeroSDXLPipeline",),
    denormalize=_divided_by_scaling_factor,
    decode=upcast_decode,
    note=_NOTE + "; with --dtype float16 and the VAE's force_upcast the latents are scaled and decoded in float32, "
                 "as the pipeline's upcast_vae does",
    previews=(ZERO_SDXL_SPACE,),
    model_ids=(r"text2video-zero.*xl", r"text-to-video-zero.*xl"),
    tiny=(TAESDXL,),
)
