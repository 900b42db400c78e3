"""HunyuanVideo 1.0 (``AutoencoderKLHunyuanVideo``).

Mirrors ``pipelines/hunyuan_video/pipeline_hunyuan_video.py`` (and its I2V, SkyReels-I2V and
Framepack siblings): ``latents.to(vae.dtype) / vae.config.scaling_factor``, then ``vae.decode``.
Kandinsky 5 shares this VAE but not the layout: see ``kandinsky5.py``.
"""
from __future__ import annotations

from ..latents import BCTHW
from .base import Family, divide_by_scaling_factor

HUNYUANVIDEO = Family(
    name="hunyuanvideo",
    label="HunyuanVideo",
    mirrors="diffusers.HunyuanVideoPipeline (pipelines/hunyuan_video/pipeline_hunyuan_video.py)",
    vae_classes=("AutoencoderKLHunyuanVideo",),
    pipelines=("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline", "HunyuanSkyreelsImageToVideoPipeline",
               "HunyuanVideoFramepackPipeline"),
    layout=BCTHW,
    channels=lambda vae: vae.config.latent_channels,
    temporal_factor=lambda vae: vae.config.temporal_compression_ratio,
    spatial_factor=lambda vae: vae.config.spatial_compression_ratio,
    denormalize=divide_by_scaling_factor,
    flow_matching=True,
)
