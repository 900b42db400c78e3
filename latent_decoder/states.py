"""State names, defined once: what the journal keeps of an item (and the summary, ``status`` and the
views show), and why a run decodes an item or skips it (``ItemState``, with its words for the dry
run and ``inspect``)."""
from __future__ import annotations

from enum import Enum

# What the journal's ``items.state`` holds, in the order ``status`` lists them.
DONE, FAILED, PENDING, CHANGED, STALE = "done", "failed", "pending", "changed", "stale"
STORED = (DONE, FAILED, PENDING, CHANGED, STALE)
PENDING_STATES = (PENDING, CHANGED, STALE)  # not done and not failed: what the summary counts as pending


class ItemState(Enum):
    """Why a run decodes an item, or that it is done (the one "done" rule: ``plan.item_state``)."""

    TODO = ("decode", PENDING)  # never decoded
    DONE = ("done", DONE)  # skipped
    CHANGED = ("decode again (changed input)", CHANGED)  # the latent file is not the one its outputs were made from
    STALE = ("decode again (settings changed)", STALE)  # decoded with other settings
    MISSING = ("decode again (outputs missing)", PENDING)  # its outputs are gone or altered
    FAILED = ("retry (failed before)", FAILED)  # the latest attempt failed; tried again
    FORCED = ("decode again (--force)", "done")  # done, but --force

    @property
    def words(self) -> str:
        """What the dry run and ``inspect`` say of such an item."""
        return self.value[0]

    @property
    def stored(self) -> str:
        """The state the journal and the summary keep: done, failed, changed, stale or pending."""
        return self.value[1]
