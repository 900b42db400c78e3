"""Executors decide only where an item's compute stage runs (``pipeline.Executor``): this process
(``inline.InlineExecutor``) or a pool of Ray actors (``ray.RayExecutor``, imported only when used).
The pipeline around it (read ahead, write, commit, stop) is ``pipeline.run_items``, for both."""
from .inline import InlineExecutor

__all__ = ["InlineExecutor"]
