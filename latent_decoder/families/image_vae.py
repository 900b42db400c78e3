"""An image VAE applied per frame: what AnimateDiff, Latte, Stable Video Diffusion and the deprecated
text-to-video pipelines share.

Their ``decode_latents`` move the frames into the batch (``[B, C, F, H, W]`` -> ``[B*F, C, H, W]``,
frame by frame within each video), multiply by ``1 / vae.config.scaling_factor`` in the loop's
dtype (the VAE's, as pipelines are loaded: cast first), call ``vae.decode`` on ``decode_chunk_size``
frames at a time and put the frames back on their axis. For ``AutoencoderKL`` each frame is decoded
alone, so the chunk size only bounds memory; ``AutoencoderKLTemporalDecoder`` (Stable Video
Diffusion) mixes the frames of one call (``vae.decode(z, num_frames=len(chunk))``), so there the
chunk size changes the frames. Each rule decodes with its pipeline's default chunk size unless the
run gives ``decode_chunk_size`` (``DecodeOptions``, part of the settings fingerprint).

The latent spaces are Stable Diffusion's image VAEs (scaled by ``scaling_factor``), previewed with
the SD 1.5 and SDXL factors ComfyUI publishes (``comfy/latent_formats.py``, classes ``SD15`` and
``SDXL``; ComfyUI's ``SVD_img2vid`` model uses ``SD15`` too, ``comfy/supported_models.py``), and
decoded by the tiny tier with the published TAESD decoders per frame (madebyollin/taesd, MIT: the
``taesd_*`` files for SD 1.x/2.x latents, ``taesdxl_*`` for SDXL's; the same decoders as diffusers'
``AutoencoderTiny`` folders madebyollin/taesd and madebyollin/taesdxl on the HF hub). TAESD takes the
latents the sampler produces: its README says its latent "scale_factor" is 1, and diffusers' docs swap
``AutoencoderTiny.from_pretrained("madebyollin/taesd")`` (``scaling_factor`` 1.0, the class default) into
the SD pipelines as their VAE, whose ``latents / scaling_factor`` then hands it the loop's latents.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from ..latents import BCTHW, BTCHW
from .base import DecodeContext, PreviewSpace, TinySpace

if TYPE_CHECKING:
    import torch

SD15_SPACE = PreviewSpace("sd1.5", "Stable Diffusion 1.x/2.x VAE", "AutoencoderKL", BCTHW, 4, 1, 8)
SDXL_SPACE = PreviewSpace("sdxl", "Stable Diffusion XL VAE", "AutoencoderKL", BCTHW, 4, 1, 8)
# SD 1.5's latent space in the frames-first layouts: SVD's temporal decoder and I2VGen-XL's step output.
SVD_SPACE = PreviewSpace("svd", "Stable Video Diffusion", "AutoencoderKLTemporalDecoder", BTCHW, 4, 1, 8)
I2VGEN_XL_SPACE = PreviewSpace("i2vgen-xl", "I2VGen-XL", "AutoencoderKL", BTCHW, 4, 1, 8)

TAESD_SOURCE = "https://github.com/madebyollin/taesd"
TAESD = TinySpace(("taesd_decoder",), 4, TAESD_SOURCE, ".pth", ("madebyollin/taesd",))
TAESDXL = TinySpace(("taesdxl_decoder",), 4, TAESD_SOURCE, ".pth", ("madebyollin/taesdxl",))


def image_spatial_ratio(vae: Any) -> int:
    """The pipelines' ``vae_scale_factor``: ``2 ** (len(block_out_channels) - 1)``."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def one_frame_per_latent_frame(vae: Any) -> int:
    return 1


def times_inverse_scaling_factor(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``1 / vae.config.scaling_factor * latents``, as written (a product, not a division)."""
    return 1 / ctx.config.scaling_factor * z


def frames_first(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``[B, F, C, H, W]`` -> ``[B, C, F, H, W]``."""
    return z.permute(0, 2, 1, 3, 4)


def decode_per_frame(z: "torch.Tensor", ctx: DecodeContext, chunk: int | None = None,
                     num_frames: bool = False) -> "torch.Tensor":
    """``[B, C, F, H, W]`` -> ``[B, 3, F, H, W]``: the frames in the batch, ``vae.decode`` on ``chunk``
    frames at a time (a run's ``decode_chunk_size`` wins; ``None``: a video's ``F`` frames, what SVD
    defaults to and, for an image VAE, the same frames as all at once), with
    ``num_frames=len(chunk)`` for a temporal decoder."""
    import torch

    b, c, f, h, w = z.shape
    frames = z.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    size = ctx.options.decode_chunk_size or chunk or f
    decoded = []
    for start in range(0, b * f, size):
        part = frames[start:start + size]
        extra = {"num_frames": part.shape[0]} if num_frames else {}
        decoded.append(ctx.vae.decode(part, **extra, return_dict=False)[0])
    video = torch.cat(decoded)
    return video.reshape(b, f, *video.shape[1:]).permute(0, 2, 1, 3, 4)


def chunked(chunk: int | None, num_frames: bool = False) -> Callable[["torch.Tensor", DecodeContext], "torch.Tensor"]:
    """A rule's ``decode``: ``decode_per_frame`` with its pipeline's default ``decode_chunk_size``."""
    return partial(decode_per_frame, chunk=chunk, num_frames=num_frames)
