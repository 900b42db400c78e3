"""Typed errors. Each carries what it concerns and reaches the user as one line.

Two kinds matter to the runner:
* ``SetupError`` stops the run before any item is decoded (exit code 2): the experiment,
  config, model, device or output folder is unusable.
* ``ItemError`` concerns one work item (bad latent file, shape that does not fit the VAE,
  decode failure): the item is recorded as failed and the run goes on (exit code 1 at the end).
"""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its class name when it has none: what fits in a
    one-line error after a colon."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """``Class: first line`` (just ``Class`` when there is no message), for errors whose type matters."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class LatentDecoderError(Exception):
    """Base class; ``str(err)`` is the one-line message shown to the user."""

    exit_code = 1


class SetupError(LatentDecoderError):
    """Something the whole run needs is missing or unusable."""

    exit_code = 2


class ExperimentError(SetupError):
    """The experiment folder, its config or its latents folder is missing or malformed."""


class ModelNotFoundError(SetupError):
    """The VAE could not be found in any of the places looked at."""


class UnsupportedModelError(SetupError):
    """The VAE exists but its class has no family rule in ``families/``."""


class TinyWeightsError(SetupError):
    """The tiny decoder's weights (``--decoder tiny``) cannot be found or used."""


class TinyWeightsNotFoundError(TinyWeightsError):
    """No tiny decoder file where it was looked for; the message says where, and which file to get."""


class TinyCheckpointError(TinyWeightsError):
    """A tiny decoder file that cannot be loaded: truncated, a pickle that holds code, not a TAEHV or TAESD decoder."""


class TinyMismatchError(TinyWeightsError):
    """A tiny decoder made for another latent space than the experiment's (channels, frames, size), or
    a distilled one made from another VAE."""


class DeviceError(SetupError):
    """The requested torch device does not exist on this machine."""


class OutputDirError(SetupError):
    """The output folder cannot be created, written or locked."""


class RunLockedError(SetupError):
    """Another run holds the output folder's lock."""


class ItemError(LatentDecoderError):
    """One work item failed; the message names the file it concerns."""


class LatentFileError(ItemError):
    """The stored latent cannot be read (truncated, not gzip, not .npy, wrong dtype, NaN/Inf)."""


class LatentShapeError(ItemError):
    """The latent's shape does not fit the VAE."""


class DecodeError(ItemError):
    """The VAE or the encoder failed on an otherwise valid latent."""


class OutputWriteError(ItemError):
    """An item's outputs could not be written (an I/O error other than a full disk)."""


class ClusterError(SetupError):
    """Ray is missing, unreachable, too small for the request, or lost every worker."""


class PoisonItemError(ItemError):
    """The item killed the worker process decoding it on every try."""


class RunStoppedError(LatentDecoderError):
    """The run cannot go on (the disk is full, the device is broken); finished items are kept."""


class DiskFullError(RunStoppedError):
    """No space left (or quota exceeded) where outputs or the journal are written."""


class DeviceFailure(RunStoppedError):
    """A sticky device error (CUDA device-side assert, illegal address): every later decode on this
    device would fail too, so the process holding it must stop (a Ray actor exits and is restarted)."""


class GalleryError(SetupError):
    """The gallery cannot be built: nothing decoded in the output folder yet, or it is not writable."""
