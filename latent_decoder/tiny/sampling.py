"""Which steps ``distill`` decodes with the full VAE, and which of them it holds out.

Early noisy steps look nothing like late clean ones, and videos differ: a sample must span both. Each
video's stored steps are placed on its trajectory by rank (0: its first stored step, 1: its last), and
the sample's slots, evenly spaced over that range, are filled by the videos in turn. The held-out
steps are every k-th slot, so they too span the noise levels and the videos. Deterministic for a seed
(the videos' order), so that a second ``distill`` finds the pairs the first one kept.
"""
from __future__ import annotations

import numpy as np

from ..experiment import LatentStep


def choose_sample(steps: list[LatentStep], size: int, held_out: int, seed: int = 0
                  ) -> tuple[list[LatentStep], list[LatentStep]]:
    """``size`` steps (training and held out), stratified: slot ``i`` of ``size`` wants the step at
    position ``(i + 0.5) / size`` of its video's trajectory (its rank among the video's stored steps),
    the videos taking the slots in turn (in an order shuffled by ``seed``); ``held_out`` of them,
    evenly spaced over the slots, so they too span the noise levels. Returns ``(train, held_out)``."""
    by_video: dict[str, list[LatentStep]] = {}
    for step in steps:
        by_video.setdefault(step.video_key, []).append(step)
    for video in by_video.values():
        video.sort(key=lambda s: s.step_index)
    position = {s.key: (i / (len(v) - 1) if len(v) > 1 else 0.5) for v in by_video.values() for i, s in enumerate(v)}
    videos = sorted(by_video)
    np.random.default_rng(seed).shuffle(videos)
    size = min(size, len(steps))
    chosen: list[LatentStep] = []
    taken: set[str] = set()
    for slot in range(size):
        wanted = (slot + 0.5) / size
        for turn in range(len(videos)):
            free = [s for s in by_video[videos[(slot + turn) % len(videos)]] if s.key not in taken]
            if free:
                step = min(free, key=lambda s: abs(position[s.key] - wanted))
                chosen.append(step)
                taken.add(step.key)
                break
    held = {int((j + 0.5) * len(chosen) / held_out) for j in range(held_out)}
    return [s for i, s in enumerate(chosen) if i not in held], [s for i, s in enumerate(chosen) if i in held]
