"""A tiny decoder distilled for one experiment (``latent-decoder distill``), kept with it:
``EXP/tiny_decoder/decoder.safetensors`` (published key layout) and ``EXP/tiny_decoder/card.json``.

The card says what the decoder was made from and how good it is: the VAE's identity (``vae_identity``:
its class, its config and its weights, by digest), the family, the steps trained on, the held-out
PSNR, the training time. ``--decoder tiny`` finds the folder without a flag, whatever ``--output-dir``
says, and refuses it in one line when the card's VAE is not the experiment's model's.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import TinyCheckpointError, TinyMismatchError
from ..models import WEIGHTS_NAME, ResolvedModel

DISTILLED_DIRNAME = "tiny_decoder"  # EXP/tiny_decoder/
WEIGHTS_FILE = "decoder.safetensors"
CARD_FILE = "card.json"


def distilled_dir(experiment_root: Path) -> Path:
    return Path(experiment_root) / DISTILLED_DIRNAME


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def vae_identity(model: ResolvedModel) -> dict[str, str]:
    """What makes a VAE this VAE: its class, its config (diffusers' bookkeeping keys aside) and its
    weights, by SHA-256. A fine-tuned VAE of the same architecture differs in its weights."""
    config = json.loads((model.folder / "config.json").read_text())
    kept = {k: v for k, v in config.items() if not k.startswith("_")}
    weights = [model.weights_file] if model.weights_file else sorted(model.folder.glob(f"{WEIGHTS_NAME}*"))
    return {"class": model.class_name,
            "config_sha256": hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest(),
            "weights_sha256": _sha256(weights)}


def read_card(folder: Path) -> dict[str, Any]:
    """The card of a distilled decoder folder; one line when it is missing or unreadable."""
    path = Path(folder) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise TinyCheckpointError(f"{path}: missing: a distilled tiny decoder needs its card (run distill again)") from None
    except (OSError, ValueError) as exc:
        raise TinyCheckpointError(f"{path}: unreadable card ({exc})") from None
    if not isinstance(card, dict) or not isinstance(card.get("vae"), dict):
        raise TinyCheckpointError(f"{path}: not a distilled decoder's card (no \"vae\" identity)")
    return card


def check_card(card: dict[str, Any], model: ResolvedModel, folder: Path) -> None:
    """Refuse (one line) a distilled decoder made from another VAE than ``model``."""
    made_from = card["vae"]
    if made_from != vae_identity(model):
        what = made_from.get("class", "?")
        raise TinyMismatchError(
            f"{Path(folder) / CARD_FILE}: this tiny decoder was distilled from another VAE ({what}, weights "
            f"{str(made_from.get('weights_sha256', '?'))[:12]}) than the experiment's model {model.source}: "
            f"run distill again, or pass --tiny-weights FILE")


def check_weights(card: dict[str, Any], digest: str, folder: Path) -> None:
    """Refuse (one line) a card that describes other weights than the folder's decoder file (its
    ``weights_sha256``): a distill stopped between writing the two."""
    described = card.get("weights_sha256")
    if described is not None and described != digest:
        raise TinyCheckpointError(f"{Path(folder) / CARD_FILE}: describes other weights than {Path(folder) / WEIGHTS_FILE} "
                                  f"(a distill stopped while saving?): run distill again")


def write_card(folder: Path, card: dict[str, Any]) -> Path:
    """Write the card atomically (a reader never sees half of it)."""
    path = Path(folder) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(card, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path
