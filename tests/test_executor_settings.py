"""Choosing the executor from command-line options (no Ray needed)."""
from __future__ import annotations

import pytest

from latent_decoder.errors import SetupError
from latent_decoder.settings import CliOptions, ExecutorSettings, resolve_executor


def gpus(n: int):
    return lambda: n


@pytest.mark.parametrize("opts, visible, kind", [
    (CliOptions(), 0, "inline"),
    (CliOptions(), 1, "inline"),
    (CliOptions(), 4, "ray"),
    (CliOptions(device="cuda:1"), 4, "inline"),  # one named card: stay in-process
    (CliOptions(device="cpu"), 4, "inline"),
    (CliOptions(workers=3), 0, "ray"),
    (CliOptions(address="auto"), 0, "ray"),
    (CliOptions(gpus=1), 1, "ray"),
    (CliOptions(io="shared"), 0, "ray"),
    (CliOptions(executor="ray"), 0, "ray"),
    (CliOptions(executor="inline"), 8, "inline"),
])
def test_auto_picks_ray_only_when_asked_or_many_gpus(opts, visible, kind):
    assert resolve_executor(opts).decided(gpus(visible)).kind == kind


def test_ray_options_are_carried_over():
    got = resolve_executor(CliOptions(address="ray://head:10001", gpus=2, actors_per_gpu=2, io="shared"))
    assert got == ExecutorSettings(kind="ray", address="ray://head:10001", gpus=2, actors_per_gpu=2, io="shared")


@pytest.mark.parametrize("opts, message", [
    (CliOptions(executor="inline", workers=2), "--workers need the Ray executor"),
    (CliOptions(workers=2, gpus=1), "not both"),
    (CliOptions(executor="ray", device="cuda:1"), "--gpus to choose"),
    (CliOptions(executor="dask"), "--executor must be one of"),
    (CliOptions(io="nfs"), "--io must be one of"),
    (CliOptions(gpus=0), "--gpus must be at least 1"),
])
def test_conflicting_options_are_one_line_setup_errors(opts, message):
    with pytest.raises(SetupError, match=message) as info:
        resolve_executor(opts)
    assert "\n" not in str(info.value)
