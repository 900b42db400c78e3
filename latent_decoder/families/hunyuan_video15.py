"""HunyuanVideo 1.5 (``AutoencoderKLHunyuanVideo15``: 32 channels, 16x spatial, 4x temporal, causal).

Mirrors ``pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5.py`` (and its image-to-video sibling,
which conditions through extra transformer input channels, not the latents): the loop's
``[B, C, T, H, W]`` latents are in the transformer's dtype; ``latents.to(vae.dtype) /
vae.config.scaling_factor``, then ``vae.decode``. Neither pipeline takes ``callback_on_step_end``:
per-step latents are captured by wrapping ``pipe.scheduler.step`` (its output is the step's latent).
The modular ``HunyuanVideo15ModularPipeline`` (``modular_pipelines/hunyuan_video1_5/decoders.py``)
decodes with the same lines.
"""
from __future__ import annotations

from ..latents import BCTHW
from .base import Family, PreviewSpace, TinySpace, config_spatial_ratio, config_temporal_ratio, divide_by_scaling_factor, latent_channels

HUNYUANVIDEO15_SPACE = PreviewSpace("hunyuanvideo1.5", "HunyuanVideo 1.5", "AutoencoderKLHunyuanVideo15", BCTHW,
                                    32, 4, 16)

HUNYUANVIDEO15 = Family(
    name="hunyuanvideo1.5",
    label="HunyuanVideo 1.5",
    mirrors="diffusers.HunyuanVideo15Pipeline (pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5.py)",
    vae_classes=("AutoencoderKLHunyuanVideo15",),
    pipelines=("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline", "HunyuanVideo15ModularPipeline"),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=config_temporal_ratio,
    spatial_factor=config_spatial_ratio,
    denormalize=divide_by_scaling_factor,
    flow_matching=True,
    note="the pipeline has no callback_on_step_end: store the output of a wrapped pipe.scheduler.step",
    previews=(HUNYUANVIDEO15_SPACE,),
    tiny=(TinySpace(("taehv1_5", "taehv1_5_super"), 32),),
    model_ids=(r"hunyuan-?video-?1[._-]?5", "hunyuan"),  # "hunyuan" alone: HunyuanVideo or 1.5
)
