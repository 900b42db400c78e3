"""The TAESD-family tiny image decoder, applied to every frame, written for this project from the
published description.

What the published decoders are (madebyollin/taesd, ``taesd.py`` and its README; diffusers'
``AutoencoderTiny`` and ``DecoderTiny``; read, not copied):

* an image decoder: one latent ``[C, h, w]`` to one RGB frame in ``[0, 1]``, with no path between
  frames, so a video's frames go into the batch and come out in their order;
* it takes the latents the sampler produces: the README says TAESD's latent "scale_factor" is 1, and
  diffusers' docs swap its ``AutoencoderTiny`` (``scaling_factor`` 1.0) into the SD pipelines as their
  VAE; so no ``1 / scaling_factor`` (which family rules say which file: ``families/image_vae.py``);
* ``3 * tanh(x / 3)``, a 3x3 convolution to the first width and a ReLU;
* stages of residual blocks (3x3, ReLU, 3x3, ReLU, 3x3, plus the block's input, ReLU); after every
  stage but the last, a nearest 2x upsample and a 3x3 convolution without bias to the next width;
* the last stage ends in a 3x3 convolution (with bias) to RGB, clamped to ``[0, 1]`` (``AutoencoderTiny``
  maps it to ``[-1, 1]`` instead, which its pipelines map back).

The published ``taesd`` (SD 1.x/2.x) and ``taesdxl`` (SDXL) decoders have 4 latent channels, width 64
throughout and 3, 3, 3, 1 blocks per stage: 8x. The checkpoint decides (``config_from_state_dict``):
latent channels, the stage widths and block counts (so the 32x ``taesana`` layout reads too).

Two published key layouts are read (``KeyLayout``): the decoder file (``taesd_decoder.pth``, the state
dict of the decoder's ``nn.Sequential``: ``<index>.<param>``, index 0 the parameterless clamp) and
diffusers' ``AutoencoderTiny`` weights (``diffusion_pytorch_model.safetensors``:
``decoder.layers.<index>.<param>``, its ``nn.Sequential`` starting at the first convolution, one index
lower, beside ``encoder.*``). Both are brought to the decoder file's indices under ``layers.``, this
module's own state dict; error lines name the tensors as the file does.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .model import IMAGE_CHANNELS, SoftClamp

INDEXED = re.compile(r"(\d+)\.(.+)")
OWN_PREFIX = "layers."
IN_CONV = 1
FIRST_BLOCK = 3  # clamp, conv, ReLU come first


@dataclass(frozen=True)
class TaesdConfig:
    """Everything that shapes a TAESD-family decoder, read from its tensors."""

    latent_channels: int = 4
    widths: tuple[int, ...] = (64, 64, 64, 64)  # per stage
    blocks: tuple[int, ...] = (3, 3, 3, 1)  # residual blocks per stage

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"{len(self.widths)} stage widths but {len(self.blocks)} block counts")

    @property
    def t_upscale(self) -> int:
        """Video frames per latent frame: an image decoder makes one."""
        return 1

    @property
    def spatial(self) -> int:
        """Pixels per latent pixel: 2x at each stage but the last."""
        return 2 ** (len(self.widths) - 1)

    @property
    def variant(self) -> str:
        return "TAESD per frame"

    def describe(self) -> str:
        return (f"{self.latent_channels} latent channels, {self.variant}, widths {'/'.join(map(str, self.widths))}, "
                f"blocks {'/'.join(map(str, self.blocks))}, {self.spatial}x spatial")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NotTaesdDecoder(ValueError):
    """A state dict that does not hold a TAESD-family decoder (the message says what is wrong)."""


class Block(nn.Module):
    """A residual block of three 3x3 convolutions at one width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + x)


class TaesdDecoder(nn.Module):
    """A TAESD-family decoder over video latents: ``run`` takes ``[N, T, C, h, w]`` like the TAEHV
    decoder and decodes every frame alone (frames in the batch), so the tiny tier's piece-by-piece decode
    (``model.frames_uint8``) drives both."""

    def __init__(self, config: TaesdConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        layers: list[nn.Module] = [SoftClamp(), nn.Conv2d(config.latent_channels, w[0], 3, padding=1), nn.ReLU()]
        for stage, (width, blocks) in enumerate(zip(w, config.blocks)):
            layers += [Block(width) for _ in range(blocks)]
            if stage < len(w) - 1:
                layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width, w[stage + 1], 3, padding=1, bias=False)]
        layers.append(nn.Conv2d(w[-1], IMAGE_CHANNELS, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def run(self, x: torch.Tensor, memory: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """``[N, T, C, h, w]`` -> ``[N, T, 3, H, W]`` in ``[0, 1]``; ``memory`` is unused (no frame
        sees another), taken so that a clip decoded in pieces goes through the same call as TAEHV's."""
        n, t = x.shape[:2]
        frames = self.layers(x.reshape(n * t, *x.shape[2:]))
        return frames.reshape(n, t, *frames.shape[1:]).clamp(0, 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run(latents)


# --------------------------------------------------------------------------- state dicts


@dataclass(frozen=True)
class KeyLayout:
    """How a file keys the decoder's layers: ``prefix`` then the layer's index, ``shift`` below the
    decoder file's (whose index 0 is the clamp)."""

    prefix: str
    shift: int

    def own(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The file's decoder tensors keyed as this module's state dict (``layers.<decoder file index>...``)."""
        out = {}
        for key, value in state.items():
            match = INDEXED.fullmatch(key[len(self.prefix):]) if key.startswith(self.prefix) else None
            if match:
                out[f"{OWN_PREFIX}{int(match.group(1)) + self.shift}.{match.group(2)}"] = value
        return out

    def file_key(self, key: str) -> str:
        """An own key as the file names it (for the error lines)."""
        index, rest = INDEXED.fullmatch(key.removeprefix(OWN_PREFIX)).groups()
        return f"{self.prefix}{int(index) - self.shift}.{rest}"


DECODER_FILE = KeyLayout("", 0)  # the published decoder file: its nn.Sequential's own keys
AUTOENCODER_TINY = KeyLayout("decoder.layers.", 1)  # diffusers: no clamp layer in its nn.Sequential


def decoder_keys(state: Mapping[str, Any]) -> tuple[dict[str, Any], KeyLayout]:
    """The decoder tensors of an ``AutoencoderTiny`` checkpoint or a published TAESD decoder file, keyed as
    this module's state dict, and the file's layout; no tensors when the file has neither layout."""
    own = AUTOENCODER_TINY.own(state)
    return (own, AUTOENCODER_TINY) if own else (DECODER_FILE.own(state), DECODER_FILE)


def _shape(state: Mapping[str, Any], index: int, param: str) -> tuple[int, ...] | None:
    value = state.get(f"{OWN_PREFIX}{index}.{param}")
    return None if value is None else tuple(int(n) for n in value.shape)


def config_from_state_dict(state: Mapping[str, Any], layout: KeyLayout = DECODER_FILE) -> TaesdConfig:
    """The configuration a decoder's tensors (``decoder_keys``) describe: the latent channels and first
    width from the first convolution, then layer by layer the blocks of each stage, the convolution
    after each upsample (the next stage's width) and the RGB head. Raises ``NotTaesdDecoder``, naming
    tensors as the file (``layout``) does."""
    def name(index: int, param: str) -> str:
        return layout.file_key(f"{OWN_PREFIX}{index}.{param}")

    first = _shape(state, IN_CONV, "weight")
    if first is None or len(first) != 4:
        raise NotTaesdDecoder(f"no tensor {name(IN_CONV, 'weight')}")
    widths, blocks = [first[0]], [0]
    index = FIRST_BLOCK
    while index < len(state):
        if _shape(state, index, "conv.0.weight") is not None:
            blocks[-1] += 1
            index += 1
        elif (head := _shape(state, index, "weight")) is not None:
            if head[0] != IMAGE_CHANNELS:
                raise NotTaesdDecoder(f"the head {name(index, 'weight')} gives {head[0]} channels, not RGB")
            break
        elif (proj := _shape(state, index + 1, "weight")) is not None:  # index: the parameterless upsample
            widths.append(proj[0])
            blocks.append(0)
            index += 2
        else:
            raise NotTaesdDecoder(f"no tensor {name(index, 'weight')} nor {name(index + 1, 'weight')}")
    else:
        raise NotTaesdDecoder("no RGB head")
    config = TaesdConfig(int(first[1]), tuple(widths), tuple(blocks))
    _check_layout(config, state, layout)
    return config


def _check_layout(config: TaesdConfig, state: Mapping[str, Any], layout: KeyLayout) -> None:
    """Every tensor the configuration needs, with its shape, and no other decoder tensor."""
    expected = {k: tuple(v.shape) for k, v in build_decoder(config, device="meta").state_dict().items()}
    missing = [layout.file_key(k) for k in expected if k not in state]
    if missing:
        raise NotTaesdDecoder(f"no tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [layout.file_key(k) for k in state if k not in expected]
    if extra:
        raise NotTaesdDecoder(f"unexpected tensor {extra[0]}")
    wrong = [k for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        raise NotTaesdDecoder(f"{layout.file_key(wrong[0])} is {tuple(state[wrong[0]].shape)}, "
                              f"expected {expected[wrong[0]]}")


def build_decoder(config: TaesdConfig, device: str | torch.device = "cpu") -> TaesdDecoder:
    with torch.device(device):
        return TaesdDecoder(config)


def load_decoder(state: Mapping[str, Any], config: TaesdConfig) -> TaesdDecoder:
    """A decoder holding a checkpoint's decoder tensors (``decoder_keys``' layout)."""
    model = build_decoder(config, device="meta")
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, assign=True)
    return model.eval()
