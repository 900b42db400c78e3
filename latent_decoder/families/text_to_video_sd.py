"""ModelScope text-to-video and I2VGen-XL, the deprecated pipelines on Stable Diffusion's ``AutoencoderKL``.

``deprecated/text_to_video_synthesis/pipeline_text_to_video_synth.py`` (``TextToVideoSDPipeline``)
and ``pipeline_text_to_video_synth_img2img.py`` (``VideoToVideoSDPipeline``) hand their legacy
``callback`` latents ``[B, C, F, H, W]`` in the UNet's dtype; ``decode_latents`` multiplies by
``1 / scaling_factor`` and decodes every frame in one call.

``deprecated/i2vgen_xl/pipeline_i2vgen_xl.py`` (``I2VGenXLPipeline``) decodes the same way but one
frame per call by default (``decode_chunk_size=1``). It takes no step callback: the latent each step
hands on is the scheduler's ``step`` output, frames first (``[B*F, C, H, W]``, the loop reshapes it
back only after), so its rule reads frames-first latents, ``[1, F, C, H, W]`` or ``[F, C, H, W]``.
"""
from __future__ import annotations

from dataclasses import replace

from ..latents import BCTHW, BTCHW
from .base import Family, latent_channels
from .image_vae import (I2VGEN_XL_SPACE, SD15_SPACE, TAESD, chunked, frames_first, image_spatial_ratio,
                        one_frame_per_latent_frame, times_inverse_scaling_factor)

TEXT_TO_VIDEO_SD = Family(
    name="text-to-video-sd",
    label="ModelScope text-to-video",
    mirrors="diffusers.TextToVideoSDPipeline (pipelines/deprecated/text_to_video_synthesis/"
            "pipeline_text_to_video_synth.py: decode_latents)",
    vae_classes=("AutoencoderKL",),
    pipelines=("TextToVideoSDPipeline", "VideoToVideoSDPipeline"),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=one_frame_per_latent_frame,
    spatial_factor=image_spatial_ratio,
    denormalize=times_inverse_scaling_factor,
    decode=chunked(None),
    reads=("decode_chunk_size",),
    previews=(SD15_SPACE,),
    model_ids=("text-to-video-ms", "modelscope", "zeroscope"),
    tiny=(TAESD,),
)

I2VGEN_XL = replace(
    TEXT_TO_VIDEO_SD, name="i2vgen-xl", label="I2VGen-XL",
    mirrors="diffusers.I2VGenXLPipeline (pipelines/deprecated/i2vgen_xl/pipeline_i2vgen_xl.py: decode_latents)",
    pipelines=("I2VGenXLPipeline",),
    layout=BTCHW,
    to_grid=frames_first,
    decode=chunked(1),
    note="the pipeline has no step callback: store each scheduler.step output as it is, frames first "
         "([F, C, H, W])",
    previews=(I2VGEN_XL_SPACE,),
    model_ids=("i2vgen",),
)
