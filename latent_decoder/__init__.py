"""latent-decoder: turn the latents a video-diffusion run stored at every step back into videos.

The public names below are loaded on first use (PEP 562), so that importing any submodule
(``latent_decoder.summary``, ``latent_decoder.cli``) does not import the whole package.
"""
from __future__ import annotations

from typing import Any

from .version import __version__

_PUBLIC = {
    "ExperimentLatentDecoder": "api",
    "LatentDecodeResult": "api",
    "decode_latent": "api",
    "LatentDecoderError": "errors",
    "SetupError": "errors",
    "ItemError": "errors",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'latent_decoder' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
