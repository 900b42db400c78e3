"""Wan 2.1 / 2.2 and the pipelines that reuse its VAE and formula (SkyReels-V2, Lucy Edit, Helios).

Mirrors ``pipelines/wan/pipeline_wan.py``: ``latents.to(vae.dtype)``, then
``latents / (1 / latents_std) + latents_mean`` with both from ``vae.config``, then ``vae.decode``.
``WanVACEPipeline`` first drops the latent frames of its reference images
(``latents[:, :, num_reference_images:]``), a call argument: told here from ``video_settings.frames``.
The modular Wan pipelines (``modular_pipelines/wan/decoders.py``) de-normalise in the loop's float32
and cast after.
Wan2.2 I2V with ``expand_timesteps`` (``pipeline_wan_i2v.py``) blends the image's condition latent
into the first latent frame only after the loop: the stored steps lack it, so it is applied here
when the video folder stores the condition latent (read with each step's latent, wherever that is
read, and part of its input identity), and a warning says so once when it does not.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

from ..latents import BCTHW
from .base import DecodeContext, Family, PreviewSpace, TinySpace, channel_stats

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONDITION_FILE = "condition_latent"  # <video folder>/condition_latent.npy[.gz] or .pt[.gz]: the image's latent
_warned: set[str] = set()


def wan_denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents / (1 / latents_std) + latents_mean``, in ``z``'s dtype, as the pipeline writes it."""
    c = ctx.config
    std = 1.0 / channel_stats(c.latents_std, z, c.z_dim)
    return z / std + channel_stats(c.latents_mean, z, c.z_dim)


def _blend_condition(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``(1 - first_frame_mask) * condition + first_frame_mask * latents``: the condition's first
    latent frame replaces the stored one (the mask is 0 there, 1 elsewhere)."""
    if ctx.condition is None:
        if z.device.type == "meta":  # shape math only
            return z
        key = str(ctx.pipeline.source)
        if key not in _warned:
            _warned.add(key)
            log.warning("Wan2.2 I2V (expand_timesteps): no %s.npy[.gz] beside the steps, so the first frame is "
                        "decoded without the image condition the pipeline blends in after its loop", CONDITION_FILE)
        return z
    condition = ctx.condition
    if condition.ndim != 5 or condition.shape[:2] != z.shape[:2] or condition.shape[3:] != z.shape[3:]:
        b, c, _, h, w = z.shape
        raise ValueError(f"{CONDITION_FILE} {tuple(condition.shape)} does not fit the latent {tuple(z.shape)}: "
                         f"expected [{b}, {c}, 1, {h}, {w}] (the image's latent for this video)")
    z = z.clone()
    z[:, :, :1] = condition.to(z.device, z.dtype)[:, :, :1]
    return z


def _expand_timesteps(index: Mapping[str, Any]) -> bool:
    return bool(index.get("expand_timesteps"))


def _z_dim(vae: Any) -> int:
    return vae.config.z_dim


def _temporal(vae: Any) -> int:
    return vae.config.scale_factor_temporal or 4


def _spatial(vae: Any) -> int:
    return vae.config.scale_factor_spatial or 8


WAN21_SPACE = PreviewSpace("wan2.1", "Wan2.1", "AutoencoderKLWan", BCTHW, 16, 4, 8)
WAN22_SPACE = PreviewSpace("wan2.2", "Wan2.2 (48 ch, patchified)", "AutoencoderKLWan", BCTHW, 48, 4, 16)

WAN = Family(
    name="wan",
    label="Wan 2.1/2.2",
    mirrors="diffusers.WanPipeline (pipelines/wan/pipeline_wan.py)",
    vae_classes=("AutoencoderKLWan",),
    pipelines=("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline"),
    layout=BCTHW,
    channels=_z_dim,
    temporal_factor=_temporal,
    spatial_factor=_spatial,
    denormalize=wan_denormalize,
    # Wan2.2 TI2V-5B is a WanPipeline with expand_timesteps: text-to-video there blends nothing.
    accepts=lambda index: not (index.get("_class_name") == "WanImageToVideoPipeline" and _expand_timesteps(index)),
    flow_matching=True,
    previews=(WAN21_SPACE, WAN22_SPACE),
    model_ids=("wan",),
    # Wan2.1 and Wan2.2 A14B share the 16-channel VAE; only Wan2.2 TI2V-5B has the 48-channel one
    tiny=(TinySpace(("taew2_1",), 16), TinySpace(("taew2_2", "taew2_2_super"), 48)),
)

WAN22_I2V = replace(
    WAN, name="wan2.2-i2v", label="Wan 2.2 I2V (expand_timesteps)",
    mirrors="diffusers.WanImageToVideoPipeline with expand_timesteps (pipelines/wan/pipeline_wan_i2v.py)",
    pipelines=("WanImageToVideoPipeline",),
    to_grid=_blend_condition,
    accepts=_expand_timesteps,
    condition_file=CONDITION_FILE,
    note=f"the first latent frame takes the image condition from {CONDITION_FILE}.npy[.gz] in the video folder "
         "(a changed file decodes that video's steps again)",
)

SKYREELS_V2 = replace(
    WAN, name="skyreels-v2", label="SkyReels-V2",
    mirrors="diffusers.SkyReelsV2Pipeline (pipelines/skyreels_v2/pipeline_skyreels_v2.py): Wan's formula",
    pipelines=("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline", "SkyReelsV2DiffusionForcingPipeline",
               "SkyReelsV2DiffusionForcingImageToVideoPipeline", "SkyReelsV2DiffusionForcingVideoToVideoPipeline"),
    accepts=lambda index: True,
    model_ids=(),
)

WAN_USERS = replace(
    SKYREELS_V2, name="wan-compatible", label="Wan-VAE pipelines (Lucy Edit, Helios)",
    mirrors="diffusers.LucyEditPipeline, HeliosPipeline (pipelines/lucy, pipelines/helios; modular_pipelines/helios/"
            "decoders.py): Wan's formula",
    pipelines=("LucyEditPipeline", "HeliosPipeline", "HeliosPyramidPipeline", "HeliosModularPipeline",
               "HeliosPyramidModularPipeline", "HeliosPyramidDistilledModularPipeline"),
    note="Helios: a stored latent is one chunk's window, decoded on its own as the pipeline decodes each chunk before "
         "joining them (the pyramid pipelines' early stages are at lower resolution)",
)


def _drop_reference_frames(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents[:, :, num_reference_images:]``: the leading latent frames beyond what ``video_settings.frames``
    gives are the reference images' (none without ``frames``)."""
    frames = ctx.video.frames
    if frames is None:
        return z
    keep = (frames - 1) // _temporal(ctx.vae) + 1
    return z[:, :, z.shape[2] - keep:] if z.shape[2] > keep else z


WAN_VACE = replace(
    SKYREELS_V2, name="wan-vace", label="Wan VACE",
    mirrors="diffusers.WanVACEPipeline (pipelines/wan/pipeline_wan_vace.py): reference frames dropped, Wan's formula",
    pipelines=("WanVACEPipeline",),
    to_grid=_drop_reference_frames,
    note="the leading latent frames of reference images (beyond what video_settings.frames gives) are dropped, as the "
         "pipeline does; without video_settings.frames they are decoded as frames",
)

WAN_MODULAR = replace(
    WAN_VACE, name="wan-modular", label="Wan (modular pipelines)",
    mirrors="diffusers.WanModularPipeline (modular_pipelines/wan/decoders.py: WanVaeDecoderStep, after "
            "WanVaceTrimReferenceLatentsStep): Wan's formula in float32, then the cast",
    pipelines=("WanModularPipeline", "WanImage2VideoModularPipeline", "Wan22ModularPipeline",
               "Wan22Image2VideoModularPipeline", "Wan22VaceModularPipeline"),
    cast_first=False,
)
