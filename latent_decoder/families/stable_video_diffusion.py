"""Stable Video Diffusion (``AutoencoderKLTemporalDecoder``).

Mirrors ``pipelines/stable_video_diffusion/pipeline_stable_video_diffusion.py``: the loop's latents
are frames first, ``[B, F, C, H, W]``, in the image embeddings' dtype (the VAE's, as pipelines are
loaded; the pipeline upcasts a ``force_upcast`` VAE only to encode the image and casts it back to
float16 before decoding); ``decode_latents`` flattens the frames into the batch, multiplies by
``1 / scaling_factor`` and calls ``vae.decode(chunk, num_frames=len(chunk))`` on
``decode_chunk_size`` frames at a time. The temporal decoder mixes the frames of one call, so the
chunk size changes the frames: the pipeline's default (``None``) is all of a video's frames in one
call; a run made with another (the diffusers example passes 8) must say so (``decode_chunk_size``).
"""
from __future__ import annotations

from ..latents import BTCHW
from .base import Family, latent_channels
from .image_vae import (SVD_SPACE, TAESD, chunked, frames_first, image_spatial_ratio, one_frame_per_latent_frame,
                        times_inverse_scaling_factor)

SVD = Family(
    name="svd",
    label="Stable Video Diffusion",
    mirrors="diffusers.StableVideoDiffusionPipeline (pipelines/stable_video_diffusion/"
            "pipeline_stable_video_diffusion.py: decode_latents)",
    vae_classes=("AutoencoderKLTemporalDecoder",),
    pipelines=("StableVideoDiffusionPipeline",),
    layout=BTCHW,
    channels=latent_channels,
    temporal_factor=one_frame_per_latent_frame,
    spatial_factor=image_spatial_ratio,
    denormalize=times_inverse_scaling_factor,
    to_grid=frames_first,
    decode=chunked(None, num_frames=True),
    reads=("decode_chunk_size",),
    note="the temporal decoder's frames depend on decode_chunk_size (default: all of a video's frames in one "
         "call, the pipeline's); give the run's own in video_settings or --decode-chunk-size",
    previews=(SVD_SPACE,),
    model_ids=("stable-video-diffusion", r"(^|/)svd"),
    tiny=(TAESD,),  # per frame: TAESD has none of the temporal decoder's mixing across frames
)
