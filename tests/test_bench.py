"""``latent-decoder bench`` runs end to end at a CPU size (a smoke test: no timing is asserted) and
prints the plain loop, our decode per dtype and our whole run side by side with ratios."""
from __future__ import annotations

from click.testing import CliRunner

from latent_decoder.bench import run_bench
from latent_decoder.cli import cli


def test_bench_prints_the_side_by_side_table():
    result = run_bench(items=2, device="cpu", dtypes=("float32", "bfloat16"),
                       size={"frames": 5, "height": 32, "width": 48}, log=lambda line: None)
    assert result.baseline > 0
    assert set(result.decode) == set(result.end_to_end) == set(result.tiny) == {"float32", "bfloat16"}
    assert all(s > 0 for s in (*result.decode.values(), *result.end_to_end.values()))
    table = "\n".join(result.table())
    assert table.startswith("device: CPU (") and "2 steps of 5x32x48" in table
    for row in ("plain diffusers loop (float32)", "latent-decoder decode only, float32",
                "latent-decoder decode only, bfloat16", "latent-decoder end to end, bfloat16",
                "end-to-end rate / decode-only rate (float32)", "tiny decoder (taew2_1 shape), bfloat16",
                "tiny decoder rate / full VAE decode-only rate (float32)"):
        assert row in table
    assert table.count("x ") >= 7  # a ratio against the plain loop on every row


def test_bench_help_says_what_it_measures():
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    assert "plain diffusers loop" in result.output and "--full" in result.output and "tiny decoder" in result.output


def test_bench_size_must_be_one_a_wan_vae_decodes():
    result = CliRunner().invoke(cli, ["bench", "--size", "16x240x432"])
    assert result.exit_code == 2 and "frames must be 4k+1" in result.output
