"""latent-decoder: turn the latents a video-diffusion run stored at every step back into videos."""
from __future__ import annotations

__version__ = "0.1.0"

from .api import ExperimentLatentDecoder, LatentDecodeResult, decode_latent  # noqa: E402
from .errors import ItemError, LatentDecoderError, SetupError  # noqa: E402

__all__ = [
    "ExperimentLatentDecoder",
    "LatentDecodeResult",
    "decode_latent",
    "LatentDecoderError",
    "SetupError",
    "ItemError",
    "__version__",
]
