"""Peak bytes of live tensors, counted from shapes: memory figures for a decode without its device.

A ``TorchDispatchMode`` sees every tensor an operator makes; each new storage adds its size until it
is freed. Run on the ``meta`` device, a full-size decode costs seconds on any machine and gives what
``torch.cuda.max_memory_allocated`` would report above the tensors made before counting (weights,
inputs), without cuDNN workspaces or the caching allocator's rounding. Used by
``benchmarks/wan_memory.py`` and the tests that hold the streamed decode to its memory.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes() as count: ...`` then ``count.peak`` (bytes) and ``count.live``."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.live = 0
        self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()  # views and in-place results share it: counted once
                if storage not in self._sizes:
                    self._sizes[storage] = storage.nbytes()
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out
