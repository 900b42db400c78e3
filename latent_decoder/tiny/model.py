"""The TAEHV-family tiny video decoder, written for this project from the published description.

What the published decoders are (madebyollin/taehv, ``taehv.py`` and its README, read not copied):

* a stack of 2D convolutions run on every frame, in ``NTCHW`` order (time before channels), on the
  latents the sampler produces (no ``latents_mean``/``latents_std`` step) and giving RGB in ``[0, 1]``;
* the latent is first squashed into ``(-3, 3)`` by ``3 * tanh(x / 3)``, then a 3x3 convolution and an
  activation widen it to the first stage's width;
* three stages, each: three "memory blocks" (a residual block whose first convolution sees the frame
  and the same block's input at the previous frame, zeros before the first), a nearest 2x upsample,
  ``TGrow`` (a 1x1 convolution to ``stride`` times the channels, read as ``stride`` consecutive frames:
  the temporal upsampling, stride 1 or 2), and a 3x3 convolution without bias to the next width;
* an activation and a 3x3 convolution to ``3 * patch**2`` channels, unfolded by pixel shuffle when the
  patch size is above 1 (Wan 2.2 and HunyuanVideo 1.5: 2, LTX-2: 4), clamped to ``[0, 1]``;
* the first ``t_upscale - 1`` output frames are dropped, so that ``T`` latent frames give the causal
  VAEs' ``(T - 1) * t_upscale + 1`` frames (the published code keeps them for CogVideoX when ``T`` is
  even, which matches that VAE's frame count; here the caller says how many to drop).

The larger published variants replace each memory block's convolutions with a 1x1, a grouped 3x3
(``groups = width // 64``), a 1x1 and a grouped 3x3 (key ``conv.6`` present: the test
stable-diffusion.cpp uses to tell ``taeltx2_3_wide`` apart) at wider stages. The checkpoint decides
everything readable from its tensors (``config_from_state_dict``): latent channels, stage widths,
block kind and groups, temporal strides, patch size. What no tensor shows is kept at the published
values: 2x spatial upsampling in every stage and ReLU activations (ComfyUI's port uses LeakyReLU(0.2)
for 32-channel latents; the upstream code read here uses ReLU for all, so ReLU is the default).

Parameters keep the published key layout (``decoder.<index>...``, the indices of its
``nn.Sequential``), so a published ``.pth``/``.safetensors`` loads as it is and a decoder trained here
saves in a form other TAEHV tools read.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_CHANNELS = 3
STAGES = 3
BLOCKS = 3  # memory blocks per stage
PREFIX = "decoder."
ACTIVATIONS = ("relu", "leaky_relu")


# The published nn.Sequential's indices: Clamp, conv, act, then per stage 3 blocks, Upsample, TGrow,
# conv, then act, conv. Parameterless layers keep their index so the keys line up.
def _stage_base(stage: int) -> int:
    return 3 + stage * (BLOCKS + 3)


def _block_index(stage: int, block: int) -> int:
    return _stage_base(stage) + block


def _grow_index(stage: int) -> int:
    return _stage_base(stage) + BLOCKS + 1


def _proj_index(stage: int) -> int:
    return _stage_base(stage) + BLOCKS + 2


IN_CONV = 1
OUT_ACT = _stage_base(STAGES)
OUT_CONV = OUT_ACT + 1


@dataclass(frozen=True)
class TinyConfig:
    """Everything that shapes a TAEHV-family decoder. The published files differ in the first four
    (and ``wide``/``groups`` for the larger variants); ``config_from_state_dict`` reads them."""

    latent_channels: int = 16
    patch_size: int = 1
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)  # stage 1-3 widths, then the head's
    time_upscale: tuple[bool, bool, bool] = (False, True, True)  # TGrow stride 2 per stage
    wide: bool = False  # 1x1 / grouped 3x3 memory blocks (the larger published variants)
    groups: tuple[int, int, int] = (1, 1, 1)  # grouped 3x3 convolutions per stage (wide blocks only)
    space_upscale: tuple[bool, bool, bool] = (True, True, True)  # 2x nearest upsample per stage
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        for width, groups in zip(self.widths, self.groups):
            if groups < 1 or width % groups:
                raise ValueError(f"width {width} does not split into {groups} groups")

    @property
    def t_upscale(self) -> int:
        """Video frames per latent frame."""
        return 2 ** sum(self.time_upscale)

    @property
    def spatial(self) -> int:
        """Pixels per latent pixel."""
        return 2 ** sum(self.space_upscale) * self.patch_size

    @property
    def variant(self) -> str:
        return "wide" if self.wide else "base"

    def describe(self) -> str:
        return (f"{self.latent_channels} latent channels, {self.variant}, widths {'/'.join(map(str, self.widths))}, "
                f"patch {self.patch_size}, {self.t_upscale}x temporal, {self.spatial}x spatial")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NotTaehvDecoder(ValueError):
    """A state dict that does not hold a TAEHV-family decoder (the message says what is wrong)."""


# --------------------------------------------------------------------------- the layers


class SoftClamp(nn.Module):
    """``3 * tanh(x / 3)``: keeps the latent in (-3, 3) and near the identity around zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _activation(name: str) -> nn.Module:
    return nn.ReLU() if name == "relu" else nn.LeakyReLU(0.2)


def _conv3(n_in: int, n_out: int, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias, groups=groups)


class MemoryBlock(nn.Module):
    """A residual block over ``cat(frame, previous frame's input)``: the only path along time besides
    TGrow. ``conv`` is the published sub-sequence (3x3, act, 3x3, act, 3x3; or for wide blocks 1x1,
    act, grouped 3x3, act, 1x1, act, grouped 3x3); input and output widths are equal, so the skip is
    the identity."""

    def __init__(self, width: int, activation: str, wide: bool, groups: int) -> None:
        super().__init__()
        if wide:
            layers = [nn.Conv2d(2 * width, width, 1), _activation(activation), _conv3(width, width, groups=groups),
                      _activation(activation), nn.Conv2d(width, width, 1), _activation(activation),
                      _conv3(width, width, groups=groups)]
        else:
            layers = [_conv3(2 * width, width), _activation(activation), _conv3(width, width),
                      _activation(activation), _conv3(width, width)]
        self.conv = nn.Sequential(*layers)
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + x)


class TimeGrow(nn.Module):
    """``TGrow``: each frame's channels times ``stride``, read as ``stride`` consecutive frames."""

    def __init__(self, width: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width, width * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, channels, height, width = x.shape
        return self.conv(x).reshape(frames * self.stride, channels, height, width)


# --------------------------------------------------------------------------- the decoder


class TinyDecoder(nn.Module):
    """A TAEHV-family decoder: ``forward`` maps ``[N, T, C, h, w]`` latents to every raw frame
    ``[N, T * t_upscale, 3, H, W]`` in ``[0, 1]`` (nothing trimmed); ``decode`` and ``frames_uint8``
    below trim like the published decode."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        layers: list[nn.Module] = [SoftClamp(), _conv3(config.latent_channels, w[0]), _activation(config.activation)]
        for stage in range(STAGES):
            layers += [MemoryBlock(w[stage], config.activation, config.wide, config.groups[stage]) for _ in range(BLOCKS)]
            layers.append(nn.Upsample(scale_factor=2) if config.space_upscale[stage] else nn.Identity())
            layers.append(TimeGrow(w[stage], 2 if config.time_upscale[stage] else 1))
            layers.append(_conv3(w[stage], w[stage + 1], bias=False))
        layers += [_activation(config.activation), _conv3(w[3], IMAGE_CHANNELS * config.patch_size ** 2)]
        self.decoder = nn.Sequential(*layers)

    def run(self, x: torch.Tensor, memory: dict[int, torch.Tensor] | None = None,
            clamp: bool = True) -> torch.Tensor:
        """``[N, T, C, h, w]`` latents -> ``[N, T * t_upscale, 3, H, W]`` raw frames in ``[0, 1]`` (not
        clamped with ``clamp=False``: training's loss, which the clamp would cut off from pixels beyond it).

        All frames at once, each memory block's past being its input shifted by one frame. ``memory``
        (by layer index) carries the last frame's input of every memory block from the previous call,
        so that a clip decoded in consecutive pieces gives the frames of the whole at once."""
        n, t = x.shape[:2]
        x = x.reshape(n * t, *x.shape[2:])
        for index, layer in enumerate(self.decoder):
            if isinstance(layer, MemoryBlock):
                seq = x.reshape(n, -1, *x.shape[1:])
                before = memory.get(index) if memory is not None else None
                before = torch.zeros_like(seq[:, :1]) if before is None else before
                past = torch.cat([before, seq[:, :-1]], 1).reshape(x.shape)
                if memory is not None:
                    memory[index] = seq[:, -1:].clone()
                x = layer(x, past)
            else:
                x = layer(x)
        if self.config.patch_size > 1:
            x = F.pixel_shuffle(x, self.config.patch_size)
        x = x.reshape(n, -1, *x.shape[1:])
        return x.clamp(0, 1) if clamp else x

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run(latents)


# --------------------------------------------------------------------------- which frames are kept


class PieceDecoder(Protocol):
    """What the piece-by-piece decode drives: ``TinyDecoder``, or TAESD's per-frame decoder
    (``taesd.TaesdDecoder``), whose ``run`` takes the same latents and ignores ``memory``."""

    config: Any  # t_upscale, spatial, widths

    def run(self, x: torch.Tensor, memory: dict[int, torch.Tensor] | None = None) -> torch.Tensor: ...



def kept_frames(latent_frames: int, t_upscale: int, trim: int, segment: int | None = None) -> np.ndarray:
    """The raw frame indices a decode keeps: all but the first ``trim`` (the published decode drops
    ``t_upscale - 1``), or, with ``segment``, all but the first ``trim`` of every ``segment`` latent
    frames (latents made of independently encoded pieces, each starting like a new clip)."""
    raw = np.arange(latent_frames * t_upscale)
    if segment is None:
        return raw[trim:]
    return raw[raw % (segment * t_upscale) >= trim]


def decode(model: TinyDecoder, latents: torch.Tensor, trim: int | None = None,
           segment: int | None = None) -> torch.Tensor:
    """``[N, T, C, h, w]`` -> ``[N, F, 3, H, W]`` in ``[0, 1]``, differentiable (for training):
    the whole clip at once, then the trim (``trim`` default: ``t_upscale - 1``)."""
    config = model.config
    keep = kept_frames(latents.shape[1], config.t_upscale, config.t_upscale - 1 if trim is None else trim, segment)
    return model.run(latents)[:, torch.as_tensor(keep, device=latents.device)]


def chunk_latent_frames(config: Any, height: int, width: int, bytes_per_value: int,
                        budget: int = 256 * 2 ** 20) -> int:
    """Latent frames per piece so that one activation of the full-size head stays within ``budget``
    (``config``: a ``TinyConfig`` or a ``taesd.TaesdConfig``)."""
    per_latent = config.t_upscale * height * config.spatial * width * config.spatial * config.widths[-1] * bytes_per_value
    return max(1, budget // max(1, per_latent))


def frames_uint8(model: PieceDecoder, latents: torch.Tensor, trim: int | None = None, segment: int | None = None,
                 scale: float = 1.0, chunk: int | None = None) -> np.ndarray:
    """One latent ``[1, T, C, h, w]`` -> the kept frames as ``[F, H', W', 3]`` uint8 on the host, without
    gradients and without ever holding the whole float video: the clip runs in pieces of ``chunk``
    latent frames (default: ``chunk_latent_frames``) with each memory block's last input carried over, which gives
    the frames of the whole clip at once (within float rounding). Frames are resized by ``scale``
    (bilinear, in float) before rounding, as the full VAE's frames are. Raises ``FloatingPointError``
    when the decoder's output holds NaN/Inf (fp16 overflow)."""
    config = model.config
    t, h, w = latents.shape[1], latents.shape[3], latents.shape[4]
    if latents.shape[0] != 1:
        raise ValueError(f"expected one latent [1, T, C, h, w], got {tuple(latents.shape)}")
    keep = kept_frames(t, config.t_upscale, config.t_upscale - 1 if trim is None else trim, segment)
    step = chunk or chunk_latent_frames(config, h, w, latents.element_size())
    memory: dict[int, torch.Tensor] = {}
    out: np.ndarray | None = None
    written = 0
    with torch.inference_mode():
        for start in range(0, t, step):
            raw = model.run(latents[:, start:start + step], memory)[0]
            first = start * config.t_upscale
            wanted = keep[(keep >= first) & (keep < first + raw.shape[0])] - first
            if not len(wanted):
                continue
            frames = raw[torch.as_tensor(wanted, device=raw.device)]
            if not bool(torch.isfinite(frames).all()):
                raise FloatingPointError("the tiny decoder's output holds NaN/Inf values")
            frames = to_uint8(frames, scale)
            if out is None:
                out = np.empty((len(keep), *frames.shape[1:]), np.uint8)
            out[written:written + len(frames)] = frames.cpu().numpy()
            written += len(frames)
    return out if out is not None else np.empty((0, 0, 0, 3), np.uint8)


def to_uint8(frames: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``[F, 3, H, W]`` in ``[0, 1]`` -> ``[F, H', W', 3]`` uint8: float32 resize by ``scale`` (bilinear,
    antialiased when shrinking, like the full VAE's frames), then ``round(255 x)``."""
    frames = frames.float()
    if scale != 1.0:
        frames = F.interpolate(frames, scale_factor=scale, mode="bilinear", antialias=scale < 1.0, align_corners=False)
    return (frames * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- state dicts


def decoder_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """The decoder's tensors of a published checkpoint (which also holds the encoder's), keyed as the
    module's own state dict (``decoder.<index>...``; not diffusers' ``decoder.layers.*``, a TAESD's)."""
    return {k: v for k, v in state.items() if k.startswith(PREFIX) and k[len(PREFIX):][:1].isdigit()}


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state:
        raise NotTaehvDecoder(f"no tensor {key}")
    return tuple(int(n) for n in state[key].shape)


def config_from_state_dict(state: Mapping[str, Any]) -> TinyConfig:
    """The configuration a checkpoint's tensors describe (never its file name): latent channels and
    the first width from the input convolution, the widths from the stage projections, the temporal
    strides from each TGrow's output channels, the patch size from the head's output channels, wide
    blocks and their groups from the memory blocks' keys and shapes. Raises ``NotTaehvDecoder``."""
    state = decoder_keys(state)
    if not state:
        raise NotTaehvDecoder("no decoder.* tensors")
    w0, latent_channels = _shape(state, f"{PREFIX}{IN_CONV}.weight")[:2]
    widths = [w0] + [_shape(state, f"{PREFIX}{_proj_index(s)}.weight")[0] for s in range(STAGES)]
    strides = []
    for stage in range(STAGES):
        out, width = _shape(state, f"{PREFIX}{_grow_index(stage)}.conv.weight")[:2]
        if width != widths[stage] or out not in (width, 2 * width):
            raise NotTaehvDecoder(f"{PREFIX}{_grow_index(stage)}.conv.weight is {out}x{width}, not a TGrow of "
                                  f"width {widths[stage]}")
        strides.append(out == 2 * width)
    head = _shape(state, f"{PREFIX}{OUT_CONV}.weight")[0]
    patch = math.isqrt(head // IMAGE_CHANNELS)
    if head != IMAGE_CHANNELS * patch * patch:
        raise NotTaehvDecoder(f"the head gives {head} channels, not 3 x patch^2")
    wide = f"{PREFIX}{_block_index(0, 0)}.conv.6.weight" in state
    groups = [1, 1, 1]
    if wide:
        for stage in range(STAGES):
            per_group = _shape(state, f"{PREFIX}{_block_index(stage, 0)}.conv.2.weight")[1]
            groups[stage] = widths[stage] // max(1, per_group)
    try:
        config = TinyConfig(int(latent_channels), patch, tuple(widths), tuple(strides), wide, tuple(groups))
    except ValueError as exc:
        raise NotTaehvDecoder(str(exc)) from None
    _check_layout(config, state)
    return config


def _check_layout(config: TinyConfig, state: Mapping[str, Any]) -> None:
    """Every tensor the configuration needs, with its shape, and no other decoder tensor."""
    expected = {k: tuple(v.shape) for k, v in build_decoder(config, device="meta").state_dict().items()}
    missing = [k for k in expected if k not in state]
    if missing:
        raise NotTaehvDecoder(f"no tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [k for k in state if k not in expected]
    if extra:
        raise NotTaehvDecoder(f"unexpected tensor {extra[0]}")
    wrong = [k for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        raise NotTaehvDecoder(f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {expected[wrong[0]]}")


def build_decoder(config: TinyConfig, device: str | torch.device = "cpu", seed: int | None = None) -> TinyDecoder:
    """A decoder of ``config`` with PyTorch's default (random) initialisation, seeded when ``seed`` is given."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        return TinyDecoder(config)


def load_decoder(state: Mapping[str, Any], config: TinyConfig | None = None) -> TinyDecoder:
    """A decoder holding a checkpoint's decoder tensors (the configuration read from them unless given)."""
    state = decoder_keys(state)
    config = config or config_from_state_dict(state)
    model = build_decoder(config, device="meta")
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, assign=True)
    return model.eval()


def state_dict_for_saving(model: TinyDecoder) -> dict[str, torch.Tensor]:
    """The decoder's tensors in the published key layout, contiguous and on the CPU."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
