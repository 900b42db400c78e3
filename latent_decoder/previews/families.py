"""Preview families: which VAE made a model's latents, and that VAE's geometry when no config is at hand.

The published factors are per latent space, not per pipeline: Wan2.2's A14B models use the Wan2.1
VAE (16 channels) and only TI2V-5B the 48-channel one, and Cosmos-Predict2 reuses the Wan2.1 VAE.
So a model id narrows the candidates and the stored latent's channel count picks among them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..latents import BCTHW, BSC, BTCHW, Layout


@dataclass(frozen=True)
class PreviewFamily:
    """A latent space, and the compression of its VAE (used when the VAE's config.json is not local)."""

    name: str  # key in latent_rgb_factors.json
    label: str  # what users call it
    vae_class: str  # the diffusers VAE class
    layout: Layout  # the stored latent's axes, as the pipeline hands it to callback_on_step_end
    channels: int
    temporal: int  # video frames per latent frame (the first latent frame gives one: causal)
    spatial: int  # pixels per latent pixel

    def fits(self, shape: tuple[int, ...] | None) -> bool:
        """Whether a stored latent of ``shape`` (batched or not) can be of this family."""
        if shape is None:
            return True
        if len(shape) == self.layout.rank - 1:
            shape = (1, *shape)
        return len(shape) == self.layout.rank and shape[self.layout.axes.index("C")] == self.channels


PREVIEW_FAMILIES: dict[str, PreviewFamily] = {f.name: f for f in (
    PreviewFamily("wan2.1", "Wan2.1", "AutoencoderKLWan", BCTHW, 16, 4, 8),
    PreviewFamily("wan2.2", "Wan2.2 (48 ch, patchified)", "AutoencoderKLWan", BCTHW, 48, 4, 16),
    PreviewFamily("hunyuanvideo", "HunyuanVideo", "AutoencoderKLHunyuanVideo", BCTHW, 16, 4, 8),
    PreviewFamily("hunyuanvideo1.5", "HunyuanVideo 1.5", "AutoencoderKLHunyuanVideo15", BCTHW, 32, 4, 16),
    PreviewFamily("mochi", "Mochi", "AutoencoderKLMochi", BCTHW, 12, 6, 8),
    PreviewFamily("ltx-video", "LTX-Video", "AutoencoderKLLTXVideo", BSC, 128, 8, 32),
    PreviewFamily("cosmos1", "Cosmos 1 (CV8x8x8)", "AutoencoderKLCosmos", BCTHW, 16, 8, 8),
    PreviewFamily("cogvideox", "CogVideoX", "AutoencoderKLCogVideoX", BTCHW, 16, 4, 8),  # no published factors
)}

# Model-id patterns (lower case, first match wins) -> candidate families; the latent's channels pick.
_ID_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"ltx-?2", ()),  # LTX-2 has another VAE (AutoencoderKLLTX2Video): no published factors
    (r"ltx", ("ltx-video",)),
    (r"hunyuan-?video-?1[._-]?5", ("hunyuanvideo1.5",)),
    (r"hunyuan", ("hunyuanvideo", "hunyuanvideo1.5")),
    (r"cosmos-?1", ("cosmos1",)),
    (r"cosmos-?(predict)?-?2|predict-?2", ("wan2.1",)),
    (r"cosmos", ("cosmos1", "wan2.1")),
    (r"wan", ("wan2.1", "wan2.2")),
    (r"mochi", ("mochi",)),
    (r"cogvideo", ("cogvideox",)),
)


def families_from_model_id(model_id: str) -> tuple[str, ...] | None:
    """Candidate families the model id names (``()``: a known model without published factors),
    or None when the id says nothing."""
    text = model_id.lower().replace("_", "-")
    for pattern, names in _ID_PATTERNS:
        if re.search(pattern, text):
            return names
    return None


def family_for_class(class_name: str, channels: int | None, rule_family: str | None = None) -> str:
    """The preview family of a VAE class with this many latent channels (Wan: 16 -> wan2.1,
    48 -> wan2.2); a class or size without a table entry keeps its rule's family name."""
    matches = [f.name for f in PREVIEW_FAMILIES.values()
               if f.vae_class == class_name and (channels is None or f.channels == channels)]
    if len(matches) == 1:
        return matches[0]
    same_class = [f.name for f in PREVIEW_FAMILIES.values() if f.vae_class == class_name]
    if len(same_class) == 1 and class_name != "AutoencoderKLWan":
        return same_class[0]  # e.g. a small CogVideoX or HunyuanVideo: same latent space family
    return rule_family or class_name
