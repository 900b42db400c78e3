"""What a family rule is: how one diffusers pipeline turns the latent its loop hands to
``callback_on_step_end`` into the input of ``vae.decode``, and what it calls then.

A stored latent is in the pipeline's own layout and in model space. ``Family.to_decoder_input``
brings it to ``[B, C, T, H, W]`` (``to_grid``), then casts to the VAE dtype and de-normalises in the
order that pipeline does (``cast_first``: most pipelines cast first and de-normalise in the VAE's
dtype; Cosmos and LTX-Video de-normalise in the loop's float32 and cast after), so ``--dtype
bfloat16`` gives the pipeline's own bf16 output. ``decode`` calls the VAE the way the pipeline does
and returns ``[B, 3, F, H, W]`` in ``[-1, 1]``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import LatentShapeError
from ..experiment import VideoSettings
from ..latents import Layout

if TYPE_CHECKING:
    import torch


# How a per-video input file beside the steps may be stored (``Family.condition_file`` names its stem).
CONDITION_SUFFIXES = (".npy.gz", ".npy", ".pt.gz", ".pt")


@dataclass(frozen=True)
class PipelineFacts:
    """What the model folder says about the pipeline around the VAE (all optional: a bare VAE has none)."""

    class_name: str | None = None  # model_index.json (or modular_model_index.json) ``_class_name``
    index: Mapping[str, Any] = field(default_factory=dict)  # model_index.json (pipeline config, e.g. expand_timesteps)
    transformer: Mapping[str, Any] = field(default_factory=dict)  # transformer/config.json (patch sizes)
    scheduler: Mapping[str, Any] = field(default_factory=dict)  # scheduler/scheduler_config.json
    source: str | None = None  # the index file it came from


@dataclass(frozen=True)
class DecodeOptions:
    """Pipeline call arguments that change the decode; ``None`` means the pipeline's default."""

    decode_timestep: float | None = None  # LTX-Video / LTX-2 with timestep_conditioning
    decode_noise_scale: float | None = None  # idem; None: the pipeline uses decode_timestep
    decode_chunk_size: int | None = None  # image VAEs per frame: frames per ``vae.decode`` call (image_vae.py)


@dataclass
class DecodeContext:
    """Everything a family rule may read besides the latent."""

    vae: Any
    video: VideoSettings = field(default_factory=VideoSettings)
    pipeline: PipelineFacts = field(default_factory=PipelineFacts)
    options: DecodeOptions = field(default_factory=DecodeOptions)
    condition: "torch.Tensor | None" = None  # the rule's ``condition_file`` as stored for this video, if any

    @property
    def config(self) -> Any:
        return self.vae.config

    @property
    def dtype(self) -> "torch.dtype":
        return self.vae.dtype


def same_grid(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    return z


def plain_decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    return ctx.vae.decode(z, return_dict=False)[0]


def divide_by_scaling_factor(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents / vae.config.scaling_factor`` (HunyuanVideo, HunyuanVideo 1.5, Kandinsky 5, Allegro...)."""
    return z / ctx.config.scaling_factor


def channel_stats(values: Any, z: "torch.Tensor", channels: int) -> "torch.Tensor":
    """Per-channel statistics (a config list or a buffer) shaped ``[1, C, 1, 1, 1]`` in ``z``'s dtype."""
    import torch

    return torch.as_tensor(values).view(1, channels, 1, 1, 1).to(z.device, z.dtype)


# Where most video VAEs state their geometry: the latent channels and compression ratios in their config,
# some (the *_compression_ratio properties of LTX, Magvit, Allegro) as attributes of the model.
def latent_channels(vae: Any) -> int:
    return vae.config.latent_channels


def config_temporal_ratio(vae: Any) -> int:
    return vae.config.temporal_compression_ratio


def config_spatial_ratio(vae: Any) -> int:
    return vae.config.spatial_compression_ratio


def temporal_ratio(vae: Any) -> int:
    return vae.temporal_compression_ratio


def spatial_ratio(vae: Any) -> int:
    return vae.spatial_compression_ratio


def causal_frames(t: int, ctx: DecodeContext, factor: int) -> int:
    """A causal video VAE: the first latent frame gives one frame, every other one ``factor``."""
    return (t - 1) * factor + 1


def causal_grid(ctx: DecodeContext, temporal: int, spatial: int) -> tuple[int, int, int]:
    """The pipelines' ``latent_num_frames, latent_height, latent_width`` for the requested video."""
    v = ctx.video
    return (v.frames - 1) // temporal + 1, v.height // spatial, v.width // spatial


@dataclass(frozen=True)
class PreviewSpace:
    """A VAE's latent space as the preview decoder sees it: the key of its published linear latent -> RGB
    factors, and the VAE's geometry, used when the VAE's config.json is not on this machine. The factors
    are per latent space, not per pipeline: Wan2.2's A14B models use the Wan2.1 VAE (16 channels) and
    only TI2V-5B the 48-channel one, and Cosmos-Predict2 reuses the Wan2.1 VAE."""

    name: str  # key in previews/latent_rgb_factors.json; what ``--decoder preview --family`` takes
    label: str  # what users call it
    vae_class: str  # the diffusers VAE class
    layout: Layout  # the stored latent's axes, as the pipeline hands it to callback_on_step_end
    channels: int
    temporal: int  # video frames per latent frame (the first latent frame gives one: causal)
    spatial: int  # pixels per latent pixel

    def fits(self, shape: tuple[int, ...] | None) -> bool:
        """Whether a stored latent of ``shape`` (batched or not) can be of this space."""
        if shape is None:
            return True
        if len(shape) == self.layout.rank - 1:
            shape = (1, *shape)
        return len(shape) == self.layout.rank and shape[self.layout.axes.index("C")] == self.channels


TAEHV_SOURCE = "https://github.com/madebyollin/taehv (safetensors/ folder)"


@dataclass(frozen=True)
class TinySpace:
    """A latent space as the tiny decoder (``--decoder tiny``) sees it: the published tiny decoder files
    made for its latents (TAEHV-family video decoders, madebyollin/taehv; or TAESD-family image decoders
    applied per frame, madebyollin/taesd), by file stem, preferred first (the base file, then the larger
    variants). The file's own tensors decide its configuration; this names which file fits."""

    files: tuple[str, ...]
    channels: int  # the latent channels the files take (the stored channel count picks the space)
    source: str = TAEHV_SOURCE  # where the files are published (the missing-file line says it)
    suffix: str = ".safetensors"  # the suffix the missing-file line asks for (both are read)
    # HF repos holding the same decoder as a diffusers ``AutoencoderTiny`` folder (its weights file
    # is looked for in the HF cache, and in the tiny decoder folder under the repo's name)
    diffusers_repos: tuple[str, ...] = ()
    # regular expressions searched in the lower-cased model id (``_`` as ``-``): among spaces of the same
    # channel count, one whose pattern matches wins over one without patterns (LTX-2.3 over LTX-2)
    model_ids: tuple[str, ...] = ()
    # latent frames per independently encoded piece whose first decoded frames are dropped like a new
    # clip's (for a tiny decoder trained on a VAE that encodes its clip in pieces); None: one piece
    segment: int | None = None

    def named_by(self, model_id: str) -> bool:
        text = model_id.lower().replace("_", "-")
        return any(re.search(p, text) for p in self.model_ids)


@dataclass(frozen=True)
class Family:
    """How one family of diffusers pipelines decodes the latents of its denoising loop."""

    name: str  # what ``--family`` takes and the summary records
    label: str  # the models, as people call them
    mirrors: str  # the diffusers pipeline source whose decode lines this reproduces
    vae_classes: tuple[str, ...]  # the VAE classes these pipelines use
    pipelines: tuple[str, ...]  # model_index.json ``_class_name`` values decoded by this rule
    layout: Layout  # the stored latent's axes
    channels: Callable[[Any], int]  # vae -> size of the layout's C axis
    temporal_factor: Callable[[Any], int]  # vae -> video frames per latent frame
    spatial_factor: Callable[[Any], int]  # vae -> pixels per latent pixel
    denormalize: Callable[["torch.Tensor", DecodeContext], "torch.Tensor"]  # [B,C,T,H,W] -> VAE input
    cast_first: bool = True  # the pipeline casts to the VAE dtype before de-normalising
    to_grid: Callable[["torch.Tensor", DecodeContext], "torch.Tensor"] = same_grid  # layout -> [B,C,T,H,W]
    decode: Callable[["torch.Tensor", DecodeContext], "torch.Tensor"] = plain_decode  # -> [B, 3, F, H, W]
    decoded_frames: Callable[[int, DecodeContext, int], int] = causal_frames  # (latent frames, ctx, factor)
    token_grid: Callable[[DecodeContext], tuple[int, int, int]] | None = None  # packed: (T, H, W) of the grid
    needs: tuple[str, ...] = ()  # video_settings fields ``to_grid`` reads
    accepts: Callable[[Mapping[str, Any]], bool] = lambda index: True  # model_index.json conditions
    stored_channels: Callable[[int], tuple[int, ...]] = lambda c: (c,)  # C -> channel counts a stored latent may have
    flow_matching: bool = False  # the pipelines step flow-matching schedulers: sigma = timestep / 1000
    extra_tokens: bool = False  # packed: the pipeline appends condition tokens, dropped before unpacking
    reads: tuple[str, ...] = ()  # the DecodeOptions fields (pipeline call arguments) this rule uses
    # A latent the pipeline adds after its loop, stored once per video beside the steps as
    # ``<stem><CONDITION_SUFFIXES>`` (the rule's ``ctx.condition``; Wan2.2 I2V's image latent). It
    # travels with each item and is part of the item's input identity.
    condition_file: str | None = None
    note: str = ""  # said by ``inspect`` (a caveat of this rule)
    cost: Callable[[Any], str] | None = None  # vae -> what a decode costs, said by ``inspect``, where not a VAE pass
    # The preview decoder: the latent spaces these pipelines' stored latents may be in (the stored
    # channel count picks), and the model ids that name these pipelines (regular expressions searched
    # in the lower-cased id with ``_`` as ``-``; the longest match wins, see ``spaces_for_model_id``).
    previews: tuple[PreviewSpace, ...] = ()
    model_ids: tuple[str, ...] = ()
    # The tiny decoder: the published TAEHV-family files for these pipelines' latent spaces.
    tiny: tuple[TinySpace, ...] = ()

    @property
    def decodes_plainly(self) -> bool:
        """Whether the pipeline's decode is ``vae.decode(z)`` as it is, so that an equivalent of that call
        (the streamed Wan decode, ``wan_stream.decode_to_uint8``) may replace it."""
        return self.decode is plain_decode

    def reads_condition(self, path: str) -> bool:
        """Whether ``path`` is this rule's condition file."""
        name = os.path.basename(path)
        return self.condition_file is not None and any(name == self.condition_file + s for s in CONDITION_SUFFIXES)

    def expected_layout(self, vae: Any) -> str:
        """The stored shape this VAE takes, e.g. ``[1, 16, T, H, W]``; with other forms (``Layout.also``),
        each: the pipeline's packed one with its patch, e.g. ``[1, S, 24*p_t*p*p] or [1, 24, T, H, W]``."""
        c = self.channels(vae)
        if not self.layout.also:
            return self.layout.describe(C=c)
        return " or ".join([self.layout.describe(C=f"{c}*p_t*p*p"), *(f.describe(C=c) for f in self.layout.also)])

    def check_shape(self, shape: tuple[int, ...], ctx: DecodeContext, source: str) -> None:
        """Reject a (batched) latent that cannot fit this VAE, before decoding, naming both shapes."""
        shape = tuple(int(n) for n in shape)
        expected = self.channels(ctx.vae)
        form = self.layout.form(len(shape)) or self.layout
        own = form is self.layout  # another form (``Layout.also``) is the unpacked grid: C channels, no tokens
        axis = form.axes.index("C")
        want = self.expected_layout(ctx.vae)
        if shape[axis] not in (self.stored_channels(expected) if own else (expected,)):
            hint = "does the config's model id match the experiment?"
            others = [i for i, n in enumerate(shape) if n == expected and i != axis]
            if others:
                hint = (f"axis {others[0]} has {expected}: stored in another layout than the {self.label} pipeline's "
                        f"{self.layout.describe()}?")
            raise LatentShapeError(
                f"{source}: latent {shape} has {shape[axis]} channels but the {self.label} VAE expects "
                f"{expected}, as {want} ({hint})"
            )
        missing = [name for name in self.needs if getattr(ctx.video, name) is None]
        if missing and own:
            raise LatentShapeError(
                f"{source}: {self.label} latent {shape} (stored as {want}) needs video_settings "
                f"{', '.join(self.needs)} in the config to unpack into [1, C, T, H, W]; missing: {', '.join(missing)}"
            )
        if self.token_grid is not None and own:
            t, h, w = self.token_grid(ctx)
            if shape[1] != t * h * w and not (self.extra_tokens and shape[1] > t * h * w):
                raise LatentShapeError(
                    f"{source}: packed latent {shape} has {shape[1]} tokens but video_settings "
                    f"{ctx.video.frames} frames {ctx.video.width}x{ctx.video.height} give a {t}x{h}x{w} latent grid "
                    f"= {t * h * w} tokens, expected {self.layout.describe(S=t * h * w, C=expected)} "
                    f"(does the config match the experiment?)"
                )

    def grid(self, shape: tuple[int, ...], ctx: DecodeContext) -> tuple[int, ...]:
        """The ``[B, C, T, H, W]`` shape ``to_grid`` makes of a stored ``shape`` (on the meta device)."""
        import torch

        return tuple(self.to_grid(torch.empty(shape, device="meta"), ctx).shape)

    def output_frames(self, shape: tuple[int, ...], ctx: DecodeContext) -> tuple[int, int, int]:
        """(frames, height, width) that decoding a stored latent of ``shape`` yields."""
        t, h, w = self.grid(shape, ctx)[2:]
        s = self.spatial_factor(ctx.vae)
        return self.decoded_frames(t, ctx, self.temporal_factor(ctx.vae)), h * s, w * s

    def to_decoder_input(self, z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
        """Stored latent (float32) -> what the pipeline passes to ``vae.decode``, in the VAE's dtype."""
        z = self.to_grid(z, ctx)
        if self.cast_first:
            return self.denormalize(z.to(ctx.dtype), ctx)
        return self.denormalize(z, ctx).to(ctx.dtype)

    def tiny_space(self, channels: int, model_id: str) -> TinySpace | None:
        """The tiny decoder files for latents of ``channels`` channels of ``model_id``, if any are published."""
        fitting = [s for s in self.tiny if s.channels == channels]
        return next((s for s in fitting if s.named_by(model_id)), next((s for s in fitting if not s.model_ids), None))

    def decode_latent(self, z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
        """Stored latent (float32, on the VAE's device) -> ``[B, 3, F, H, W]`` video in ``[-1, 1]``."""
        return self.decode(self.to_decoder_input(z, ctx), ctx)
