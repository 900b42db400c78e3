"""Planning: which items a run decodes, by the one rule of when an item is done.

An item is done when the journal's latest attempt at it succeeded, was made from these very input
files (``identity``: path, size and mtime, else the bytes' digest; the latent, the x0 view's
previous step and sigmas, the video's condition file), with these settings (model, dtype, format,
encoder, scale, video geometry), and its outputs are on disk with the recorded sizes. Everything
else is decoded; ``ItemState`` says why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ExperimentError
from .experiment import LatentStep
from .families import find_condition
from .identity import InputId, add_input, input_params, same_content, same_stat
from .journal import ItemEntry, Journal, Migration, fingerprint_text
from .layout import OutputLayout, output_size
from .settings import RunSettings
from .states import ItemState
from .x0 import attach_x0, model_scheduler


class OutputCheck:
    """Whether an item's recorded outputs are still on disk: one listing per output folder (cached),
    plus one stat for the video's size, so resuming 100,000 items stays fast."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.listings: dict[str, frozenset[str]] = {}

    def _names(self, folder: str) -> frozenset[str]:
        try:
            names = frozenset(os.listdir(f"{self.root}/{folder}"))
        except OSError:
            names = frozenset()
        self.listings[folder] = names
        return names

    def intact(self, outputs: tuple[tuple[str, str, int | None], ...]) -> bool:
        for kind, rel, size in outputs:
            folder, _, name = rel.rpartition("/")
            names = self.listings.get(folder)
            if name not in (names if names is not None else self._names(folder)):
                return False
            if kind == "video" and output_size(f"{self.root}/{rel}") != size:
                return False
        return True


def item_state(entry: ItemEntry | None, step: LatentStep, fingerprint: str, outputs: OutputCheck,
               force: bool = False) -> tuple[ItemState, InputId | None]:
    """The one "done" rule. Also returns the input's new identity when only its stat changed (same
    bytes): the journal stores it so the next resume takes the fast path again."""
    if entry is None or entry.status is None:
        return ItemState.TODO, None
    if entry.status != "ok":
        return ItemState.FAILED, None
    refreshed = None
    stored = entry.input
    if stored is None or not same_stat(stored, step):
        if stored is None or not same_content(stored, step):
            return ItemState.CHANGED, None
        refreshed = InputId(step.file, step.size, step.mtime_ns, stored.digest, input_params(step))
    if entry.settings != fingerprint:
        return ItemState.STALE, refreshed
    if not outputs.intact(entry.outputs):
        return ItemState.MISSING, refreshed
    return (ItemState.FORCED if force else ItemState.DONE), refreshed


@dataclass
class Plan:
    items: list[LatentStep]  # the steps passing the run's filters
    states: dict[str, ItemState]  # of ``items``
    present: list[LatentStep] = field(default_factory=list)  # every step of the experiment now
    stored: dict[str, str] = field(default_factory=dict)  # every present step's state, as the journal keeps it
    refreshed: dict[str, InputId] = field(default_factory=dict)  # same bytes, new stat
    duplicates: list[str] = field(default_factory=list)  # of the filtered steps: what the run warns about
    all_duplicates: list[str] = field(default_factory=list)  # of the whole experiment: what the summary lists
    journal_behind: bool = False  # the journal's items differ from the experiment as scanned now
    unavailable: dict[str, str] = field(default_factory=dict)  # x0 view: filtered steps without an x0, why
    x0_label: str | None = None  # x0 view: exact or approximate, and where sigma came from
    entries: dict[str, ItemEntry] = field(default_factory=dict, repr=False)  # the journal's, when planned

    def sync(self, journal: Journal) -> bool:
        """Bring the journal's items to this plan's view of the experiment (see ``Journal.sync``)."""
        return journal.sync(self.present, self.stored, self.refreshed, self.entries)

    @property
    def todo(self) -> list[LatentStep]:
        return [s for s in self.items if self.states[s.key] is not ItemState.DONE]

    def count(self, state: ItemState) -> int:
        return sum(1 for s in self.states.values() if s is state)


def attach_conditions(steps: list[LatentStep]) -> list[LatentStep]:
    """Each step with its video's condition file, where the video folder stores one (one look per video).

    Attached whatever the family: the planner may not know it (a dry run whose model is not at
    hand), and the identity must be right either way. The worker's rule decides whether to use it
    (``Family.reads_condition``); a file no rule of this run reads costs a read per item and, when
    it changes, a decode that gives the same video."""
    found: dict[str, tuple[str, os.stat_result] | None] = {}
    attached = []
    for step in steps:
        folder = os.path.dirname(step.file)
        if folder not in found:
            found[folder] = find_condition(folder)
        condition = found[folder]
        attached.append(step if condition is None else
                        add_input(step, condition[1].st_size, condition[1].st_mtime_ns, condition=condition[0]))
    return attached


def make_plan(settings: RunSettings, journal: Journal) -> Plan:
    """States of the steps passing the filters. The whole experiment is scanned and judged by the same
    rule (names and stat, plus one listing per output folder; a file is read only when its stat
    changed), so that the journal, and the summary made from it, tell the state of every step there
    is now, whatever the filters."""
    found = settings.experiment.scan()
    present = found.steps
    unavailable: dict[str, str] = {}
    x0_label = None
    if settings.output.view == "x0":
        o = settings.output
        scheduler = model_scheduler(o.model, o.vae_subfolder, o.vae_config)
        x0 = attach_x0(found.steps, scheduler)
        present, unavailable = x0.steps, x0.unavailable
        x0_label = x0.label(scheduler)
    present = attach_conditions(present)  # after attach_x0, which adds the previous step's latent stat alone
    entries = journal.entries()
    fingerprint = fingerprint_text(settings.output.fingerprint())
    covers = settings.filters.covers
    outputs = OutputCheck(settings.output_dir)
    plan = Plan([], {}, present, entries=entries, x0_label=x0_label,
                duplicates=[m for prompt, video, step, m in found.duplicates if covers(prompt, video, step)],
                all_duplicates=[m for *_, m in found.duplicates])
    everything = not settings.filters
    plan.unavailable = {k: why for k, why in unavailable.items() if everything or covers(*k.split("/"))}
    for step in present:
        key = step.key
        covered = everything or covers(step.prompt, step.video, step.step)
        # Steps outside the filters are checked too (stat only, as a dry run does), so the journal, and
        # the summary, status and gallery made from it, never certify what this run did not look at.
        state, refreshed = item_state(entries.get(key), step, fingerprint, outputs, settings.force and covered)
        plan.stored[key] = state.stored
        if refreshed is not None:
            plan.refreshed[key] = refreshed
        if covered:
            plan.items.append(step)
            plan.states[key] = state
    return plan


def plan_run(settings: RunSettings) -> Plan:
    """The plan of a run, from the experiment as scanned now and the journal, read-only. An experiment
    with no step to decode (none stored, or none passing the filters) is a setup error."""
    layout = OutputLayout(settings.output_dir)
    with Journal.open(layout, write=False, migration=migration(settings)) as journal:
        plan = make_plan(settings, journal)
        plan.journal_behind = plan.sync(journal)
    if not plan.items and settings.watch is None:  # watching, an empty start just waits for steps
        raise _nothing_to_decode(settings, plan)
    return plan


def migration(settings: RunSettings) -> Migration:
    """How an older version's per-step records map onto this run's experiment."""
    return Migration(settings.experiment.latents_dir, settings.output.geometry)


def _nothing_to_decode(settings: RunSettings, plan: Plan) -> ExperimentError:
    latents = settings.experiment.latents_dir
    f = settings.filters
    if plan.unavailable:
        key, why = next(iter(plan.unavailable.items()))
        return ExperimentError(f"no step has an x0 to decode ({len(plan.unavailable)} without): {key}: {why}")
    if f:
        return ExperimentError(f"no latent steps under {latents} match the filters")
    return ExperimentError(f"no latent steps under {latents} (expected <prompt>/<video>/step_NNN.npy.gz)")
