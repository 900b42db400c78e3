"""What a short ``decode`` process costs, with the heap frozen once the VAE is loaded (the CLI's and its
Ray workers' way, ``latent_decoder/heap.py``) and without (a program calling the library).

    python benchmarks/process_start.py            # 5 processes of each kind
    python benchmarks/process_start.py --runs 10

Each process decodes 3 steps of a tiny Wan VAE on the CPU, one thread, from the same experiment
(its output folder removed between runs), as ``latent-decoder decode EXP --device cpu``. The figure
is the process's CPU time (user + system, from ``wait4``), median of the runs; most of it is
starting: importing torch and diffusers, and the garbage collector's walks over what they leave.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latent_decoder.synthetic import build_synthetic_experiment, build_tiny_wan_vae  # noqa: E402

# The same command line either way; only the entry point differs: ``main`` says the process is the
# tool's own (it freezes), ``cli`` alone is how a program embedding the click group calls it.
KINDS = {
    "CLI (heap frozen)": "from latent_decoder.cli import main as run",
    "library call (collector as set)": "from latent_decoder.cli import cli as run",
}


def cpu_seconds(entry: str, exp: Path) -> float:
    code = f"import sys; {entry}; sys.argv = ['latent-decoder', 'decode', {str(exp)!r}, '--device', 'cpu']; run()"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"decode failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        build_tiny_wan_vae(seed=0).save_pretrained(model / "vae")
        exp = build_synthetic_experiment(Path(tmp) / "exp", model_dir=model, steps=3, height=32, width=48)
        rows = {kind: [] for kind in KINDS}
        for _ in range(args.runs):
            for kind, entry in KINDS.items():  # interleaved, so a busy moment hits both alike
                shutil.rmtree(exp / "latents_videos", ignore_errors=True)
                rows[kind].append(cpu_seconds(entry, exp))
    base = statistics.median(rows["library call (collector as set)"])
    print(f"CPU seconds of one `decode` process (3 tiny steps, cpu, 1 thread), median of {args.runs}:")
    for kind, values in rows.items():
        mid = statistics.median(values)
        print(f"  {kind:34s} {mid:5.2f} s  ({mid / base:.2f}x)")


if __name__ == "__main__":
    main()
