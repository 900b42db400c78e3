"""The tiny decoder tier (``--decoder tiny``): a TAEHV-family video decoder, published or distilled, or
for the image-VAE pipelines a published TAESD-family image decoder run on every frame, that decodes a
step in a fraction of the full VAE's time and memory, to the full VAE's frames and size.

    model.py       the decoder itself (written here from the published description): configuration read
                   from a checkpoint's tensors, random init, the differentiable decode for training and
                   the lean piece-by-piece decode to uint8 frames for inference
    taesd.py       the TAESD-family image decoder (written here from the published description), per frame,
                   through the same piece-by-piece decode; its two published key layouts
    checkpoint.py  reading ``.safetensors``/``.pth`` files (or an ``AutoencoderTiny`` folder's) safely
                   (``weights_only``), which decoder their keys hold, their digest; saving
    distilled.py   a decoder distilled for an experiment: EXP/tiny_decoder/ (weights and card), the VAE identity
    setup.py       which file a run uses (flag, distilled, folder setting, HF cache; never downloaded) and
                   whether it fits the latents (the published files per latent space: ``Family.tiny``)
    worker.py      TinyWorker: the compute stage of the item lifecycle with a tiny decoder
    quality.py     PSNR and SSIM of a decoder's frames against the full VAE's
    sampling.py    which steps distill decodes with the full VAE, and which it holds out
    training.py    training a tiny decoder on (latent, VAE frames) pairs, measured on held-out ones
    pairs.py       the VAE worker that keeps each decoded step's latent and frames as a training pair
    distill.py     ``latent-decoder distill``: the sample, its decode, the training, the card
"""
from __future__ import annotations

TINY_DIRNAME = "latents_tiny"  # EXP/latents_tiny: tiny decodes never overwrite full decodes
DISTILL_SAMPLE = 32  # distill: steps decoded with the full VAE (training and held out)
DISTILL_MINUTES = 5.0  # distill: training time
