"""Training a tiny decoder on (stored latent, full-VAE frames) pairs, and measuring it on held-out ones.

* **From scratch** the configuration comes from the VAE (``config_for_vae``): its latent channels,
  its temporal factor as the stages whose ``TGrow`` doubles the frames, its spatial factor as the
  patch size over the three 2x upsamples. The initialisation (``init_for_training``) starts the
  decoder as a plain upsampler: every memory block's last convolution at zero (the block passes its
  input on), every ``TGrow`` copying its frame into each of the frames it makes, the head's bias at
  mid-grey. Measured on the demo, that reaches a given held-out PSNR in about a third fewer steps
  than PyTorch's default initialisation.
* **Batches** are crops of the pairs: ``CROP_PIXELS`` output pixels per crop at most, the same crop
  size for the whole batch, so a full-size Wan latent trains in memory. A crop that starts after a
  clip's first latent frame gets one more latent frame in front, whose frames are not scored: every
  scored frame's memory blocks then see a real previous frame, as in a whole-clip decode.
* **The loss** is the mean squared error of the unclamped output in ``[0, 1]`` (the clamp of a decode
  would give no gradient to pixels beyond it), which is what PSNR measures.
* **Measured** are the current weights and an exponential moving average of them (steadier once the
  loss levels off), decoding each held-out latent whole, as ``--decoder tiny`` does
  (``model.frames_uint8``), against the VAE's uint8 frames: PSNR and SSIM (``quality.py``). The best
  weights measured are kept.
* **Speed**: channels-last convolutions, and bfloat16 autocast where the device computes it natively
  (``fast_bfloat16``): on this project's 2-core CPU (AMX) the two make a training step about 2.5x faster.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .model import STAGES, MemoryBlock, TimeGrow, TinyConfig, TinyDecoder, build_decoder, frames_uint8, kept_frames
from .quality import psnr, ssim

BASE_SPATIAL = 2 ** STAGES  # pixels per latent pixel from the three 2x upsamples; the patch size does the rest
CROP_PIXELS = 2 ** 18  # output pixels (frames x height x width) a training crop holds at most
BATCH = 4
LEARNING_RATE = 1.5e-3
MEASURE_EVERY_S = 10.0
EMA_MOST = 0.99  # the moving average's decay, reached after ~1000 steps (it starts shorter: (1 + n) / (10 + n))


class UnfitVae(ValueError):
    """A VAE whose geometry no TAEHV-family decoder has (the message says why)."""


def config_for_vae(channels: int, temporal: int, spatial: int, width: int) -> TinyConfig:
    """The configuration of a decoder made from scratch for a VAE: its channels, ``temporal`` frames per
    latent frame (1, 2, 4 or 8: that many stages double the frames, the last ones), ``spatial``
    pixels per latent pixel (8 times the patch size), stage widths ``width``, ``width/2``, ``width/4``,
    ``width/4`` (the published decoders: 256)."""
    if temporal not in (1, 2, 4, 8):
        raise UnfitVae(f"a TAEHV-family decoder makes 1, 2, 4 or 8 frames per latent frame, this VAE {temporal}")
    if spatial < BASE_SPATIAL or spatial % BASE_SPATIAL:
        raise UnfitVae(f"a TAEHV-family decoder makes 8x, 16x, 24x ... pixels per latent pixel, this VAE {spatial}x")
    if width < 4 or width % 4:
        raise UnfitVae(f"--width must be a multiple of 4, got {width}")
    doubled = int(math.log2(temporal))
    return TinyConfig(latent_channels=channels, patch_size=spatial // BASE_SPATIAL,
                      widths=(width, width // 2, width // 4, width // 4),
                      time_upscale=tuple(stage >= STAGES - doubled for stage in range(STAGES)))


def init_for_training(config: TinyConfig, seed: int) -> TinyDecoder:
    """A new decoder that starts as a plain upsampler (see the module's docstring)."""
    model = build_decoder(config, seed=seed)
    with torch.no_grad():
        for layer in model.decoder:
            if isinstance(layer, MemoryBlock):
                last = layer.conv[-1]
                last.weight.zero_()
                last.bias.zero_()
            elif isinstance(layer, TimeGrow):
                width = layer.conv.weight.shape[1]
                copies = torch.eye(width).repeat(layer.stride, 1)[:, :, None, None]
                layer.conv.weight.copy_(copies + 0.01 * torch.randn_like(layer.conv.weight))
        model.decoder[-1].bias.fill_(0.5)
    return model


@dataclass
class Pair:
    """One training or held-out item: the tiny decoder's input and the full VAE's frames."""

    key: str  # prompt/video/step
    latent: torch.Tensor  # [1, T, C, h, w] float32 on the CPU
    frames: np.ndarray  # [F, H, W, 3] uint8 (memory-mapped)
    trim: int  # raw frames the decode drops at the start (``setup.trim_for``)
    segment: int | None = None  # latent frames per independently decoded piece (``TinySpace.segment``)

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.latent.shape[i] for i in (1, 3, 4))


@dataclass(frozen=True)
class Quality:
    """The held-out measure of a decoder: mean PSNR and SSIM over the held-out steps, and each step's PSNR."""

    psnr: float
    ssim: float
    per_step: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> tuple[str, float]:
        key = min(self.per_step, key=self.per_step.get)
        return key, self.per_step[key]


def measure_quality(model: TinyDecoder, pairs: list[Pair], device: torch.device) -> Quality:
    """Decode every pair's latent whole (as ``--decoder tiny`` does) and compare with the VAE's frames."""
    scores, similar = {}, []
    for pair in pairs:
        try:
            frames = frames_uint8(model, pair.latent.to(device), pair.trim, pair.segment)
        except FloatingPointError:  # weights a diverging step ruined: scored as worthless, never kept
            scores[pair.key] = 0.0
            similar.append(0.0)
            continue
        target = np.asarray(pair.frames)
        if frames.shape != target.shape:
            raise ValueError(f"{pair.key}: the tiny decoder makes {frames.shape} frames, the VAE made {target.shape}")
        scores[pair.key] = psnr(frames, target)
        similar.append(ssim(frames, target))
    finite = [min(s, 99.0) for s in scores.values()]
    return Quality(float(np.mean(finite)), float(np.mean(similar)), scores)


@dataclass(frozen=True)
class Crop:
    """A crop size: latent frames (a context frame in front included), latent height and width."""

    frames: int
    height: int
    width: int


def crop_size(pairs: list[Pair], config: TinyConfig, pixels: int = CROP_PIXELS) -> Crop:
    """The largest crop every pair holds whose output stays within ``pixels``: time first shortened to
    two latent frames, then height and width together, then time to one."""
    t = min(p.grid[0] for p in pairs)
    h = min(p.grid[1] for p in pairs)
    w = min(p.grid[2] for p in pairs)

    def out(ct: int, ch: int, cw: int) -> int:
        return ct * config.t_upscale * ch * cw * config.spatial ** 2

    while out(t, h, w) > pixels and t > 2:
        t -= 1
    while out(t, h, w) > pixels and (h > 1 or w > 1):
        h, w = max(1, h * 7 // 8), max(1, w * 7 // 8)
    while out(t, h, w) > pixels and t > 1:
        t -= 1
    return Crop(t, h, w)


def fast_bfloat16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 convolutions natively (a GPU that supports them; a CPU with
    AVX-512 BF16 or AMX), where mixed precision trains about twice as fast; elsewhere it would be slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in ("_is_amx_tile_supported",
                                                                        "_is_avx512_bf16_supported"))


class Trainer:
    """Adam on random crops of the training pairs; an exponential moving average of the weights is what
    is measured and kept."""

    def __init__(self, model: TinyDecoder, train: list[Pair], held_out: list[Pair], device: torch.device,
                 seed: int = 0, batch: int = BATCH, lr: float = LEARNING_RATE) -> None:
        self.device = device
        # channels-last convolutions: about a fifth faster on a CPU (and what cuDNN prefers for bfloat16)
        self.model = model.to(device, memory_format=torch.channels_last).train()
        self.average = copy.deepcopy(self.model).eval()
        for p in self.average.parameters():
            p.requires_grad_(False)
        self.train_pairs, self.held_out = train, held_out
        self.batch = batch
        self.crop = crop_size(train, model.config)
        # one fused kernel for all parameters where torch has it: about 6% of a demo training step on a CPU
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0,
                                           fused=device.type in ("cpu", "cuda"))
        self.rng = np.random.default_rng(seed)
        self.bfloat16 = fast_bfloat16(device)
        self.steps = 0
        self.best: Quality | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_step = 0  # the optimiser steps behind the best weights (0: the starting ones)

    def _sample(self) -> tuple[torch.Tensor, list[tuple[np.ndarray, np.ndarray]]]:
        """A batch of latent crops and, per crop, which raw output frames are scored against which frames."""
        c, config = self.crop, self.model.config
        s, up = config.spatial, config.t_upscale
        inputs, targets = [], []
        for index in self.rng.integers(0, len(self.train_pairs), self.batch):
            pair = self.train_pairs[index]
            t, h, w = pair.grid
            t0 = int(self.rng.integers(0, t - c.frames + 1))
            y0, x0 = int(self.rng.integers(0, h - c.height + 1)), int(self.rng.integers(0, w - c.width + 1))
            inputs.append(pair.latent[0, t0:t0 + c.frames, :, y0:y0 + c.height, x0:x0 + c.width])
            keep = kept_frames(t, up, pair.trim, pair.segment)  # video frame i is raw frame keep[i]
            raw = np.arange(t0 * up, (t0 + c.frames) * up)
            scored = raw[np.isin(raw, keep) & ((raw >= (t0 + 1) * up) if t0 > 0 and c.frames > 1 else True)]
            frames = pair.frames[np.searchsorted(keep, scored), y0 * s:(y0 + c.height) * s, x0 * s:(x0 + c.width) * s]
            targets.append((scored - t0 * up, np.array(frames)))
        return torch.stack(inputs).to(self.device), targets

    def step(self) -> float:
        """One optimiser step; returns its loss."""
        latents, targets = self._sample()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            raw = self.model.run(latents, clamp=False).float()  # [N, frames, 3, H, W]
        losses = []
        for n, (which, frames) in enumerate(targets):
            if not len(which):
                continue
            want = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            losses.append(F.mse_loss(raw[n, torch.as_tensor(which, device=self.device)], want))
        loss = torch.stack(losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        decay = min(EMA_MOST, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.average.parameters()), list(self.model.parameters()), 1 - decay)
        return loss.item()

    def measure(self) -> Quality:
        """The averaged and the current weights on the held-out pairs (the average is better once the
        loss levels off, the current weights while it still falls fast); the better of the two is
        returned, and kept when it is the best so far."""
        quality, model = measure_quality(self.average, self.held_out, self.device), self.average
        if self.steps:
            current = measure_quality(self.model, self.held_out, self.device)
            if current.psnr > quality.psnr:
                quality, model = current, self.model
        if self.best is None or quality.psnr > self.best.psnr:
            self.best, self.best_step = quality, self.steps
            self.best_state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        return quality


Progress = Callable[[int, float, float, "Quality | None"], None]  # (steps, seconds, loss, new measure or None)


@dataclass
class Outcome:
    """How a training ended: ``time``, ``target`` (``until_psnr`` reached) or ``interrupted``; after how long."""

    reason: str = "interrupted"
    seconds: float = 0.0


def train(trainer: Trainer, seconds: float, outcome: Outcome, until_psnr: float | None = None,
          on_progress: Progress | None = None) -> None:
    """Train for ``seconds`` (measuring on the held-out pairs every thirtieth of the time, between 2 and
    ``MEASURE_EVERY_S`` seconds, less often while measuring takes more than a tenth of the time, and once
    at the end), or until the best held-out PSNR reaches ``until_psnr``. ``outcome`` says why it stopped
    and when, also when a ``KeyboardInterrupt`` goes on to the caller (``trainer.best_state``: the best
    weights measured)."""
    measure_every = min(MEASURE_EVERY_S, max(2.0, seconds / 30))
    start = time.perf_counter()
    last_measure = start
    spent_measuring = 0.0
    loss = float("nan")

    def reached() -> bool:
        return until_psnr is not None and trainer.best is not None and trainer.best.psnr >= until_psnr

    try:
        while time.perf_counter() - start < seconds and not reached():
            loss = trainer.step()
            now = time.perf_counter()
            quality = None
            if now - last_measure >= max(measure_every, 10 * spent_measuring) and now - start < seconds:
                quality = trainer.measure()
                spent_measuring = time.perf_counter() - now
                last_measure = time.perf_counter()
            if on_progress is not None:
                on_progress(trainer.steps, time.perf_counter() - start, loss, quality)
        if not reached():
            quality = trainer.measure()
            if on_progress is not None:
                on_progress(trainer.steps, time.perf_counter() - start, loss, quality)
        outcome.reason = "target" if reached() else "time"
    finally:
        outcome.seconds = time.perf_counter() - start
