"""Executors only schedule: they call the worker's stages and report each finished item."""
from .inline import InlineExecutor, ResultCallback

__all__ = ["InlineExecutor", "ResultCallback"]
