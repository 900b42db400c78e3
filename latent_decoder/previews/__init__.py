"""Previews without a model: every stored latent frame through a linear latent -> RGB map.

A preview costs a matmul per step instead of a VAE decode, so a whole denoising run can be watched
in seconds on a CPU. The map is either the family's published factors (``latent_rgb_factors.json``,
from ComfyUI) or one fitted to a model's own VAE by ``latent-decoder calibrate-preview``.

    factors.py     published factors (package data) and calibrated maps (a per-model cache file)
    projection.py  the projection at latent resolution, and its expansion to the decoded video's size
    setup.py       model + options + one latent header -> the family, the map and the geometry to use
                   (the latent spaces and the model ids that name them are the family rules':
                   ``families.PREVIEW_SPACES``)
    worker.py      PreviewWorker: the compute stage of the item lifecycle, without a VAE
    calibrate.py   fitting a map to a VAE's own decodes (``calibrate-preview``)
"""
from __future__ import annotations

PREVIEW_DIRNAME = "latents_previews"  # EXP/latents_previews: previews never overwrite full decodes
