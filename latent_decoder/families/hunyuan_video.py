"""HunyuanVideo 1.0 (``AutoencoderKLHunyuanVideo``).

Mirrors ``pipelines/hunyuan_video/pipeline_hunyuan_video.py`` (and its SkyReels-I2V and Framepack
siblings): ``latents.to(vae.dtype) / vae.config.scaling_factor``, then ``vae.decode``. The I2V
pipeline (``pipeline_hunyuan_video_image2video.py``) does the same, then drops the first 4 decoded
frames when the transformer's ``image_condition_type`` is ``latent_concat`` (``video[:, :, 4:]``).
Kandinsky 5 shares this VAE but not the layout: see ``kandinsky5.py``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..latents import BCTHW
from .base import (DecodeContext, Family, PreviewSpace, TinySpace, causal_frames, config_spatial_ratio, config_temporal_ratio,
                    divide_by_scaling_factor, latent_channels, plain_decode)

if TYPE_CHECKING:
    import torch

I2V_DROPPED_FRAMES = 4  # HunyuanVideoImageToVideoPipeline: video[:, :, 4:] with latent_concat


def _latent_concat(ctx: DecodeContext) -> bool:
    return ctx.pipeline.transformer.get("image_condition_type") == "latent_concat"


def _i2v_decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    video = plain_decode(z, ctx)
    return video[:, :, I2V_DROPPED_FRAMES:] if _latent_concat(ctx) else video


def _i2v_frames(t: int, ctx: DecodeContext, factor: int) -> int:
    return causal_frames(t, ctx, factor) - (I2V_DROPPED_FRAMES if _latent_concat(ctx) else 0)

HUNYUANVIDEO_SPACE = PreviewSpace("hunyuanvideo", "HunyuanVideo", "AutoencoderKLHunyuanVideo", BCTHW, 16, 4, 8)

HUNYUANVIDEO = Family(
    name="hunyuanvideo",
    label="HunyuanVideo",
    mirrors="diffusers.HunyuanVideoPipeline (pipelines/hunyuan_video/pipeline_hunyuan_video.py)",
    vae_classes=("AutoencoderKLHunyuanVideo",),
    pipelines=("HunyuanVideoPipeline", "HunyuanSkyreelsImageToVideoPipeline", "HunyuanVideoFramepackPipeline"),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=config_temporal_ratio,
    spatial_factor=config_spatial_ratio,
    denormalize=divide_by_scaling_factor,
    flow_matching=True,
    previews=(HUNYUANVIDEO_SPACE,),
    model_ids=("hunyuan",),
    tiny=(TinySpace(("taehv",), 16),),
)

HUNYUANVIDEO_I2V = replace(
    HUNYUANVIDEO, name="hunyuanvideo-i2v", label="HunyuanVideo I2V",
    mirrors="diffusers.HunyuanVideoImageToVideoPipeline (pipelines/hunyuan_video/pipeline_hunyuan_video_image2video.py)",
    pipelines=("HunyuanVideoImageToVideoPipeline",),
    decode=_i2v_decode,
    decoded_frames=_i2v_frames,
    note="with the transformer's image_condition_type latent_concat the first 4 decoded frames are dropped, "
         "as the pipeline does (read from transformer/config.json)",
)
