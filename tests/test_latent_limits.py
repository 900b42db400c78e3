"""A latent's ``.npy`` header is checked before anything is allocated: a header that declares a huge
shape, more data than the file holds, or an object array, and a gzip stream that holds far more than
its header declares (a gzip bomb), each fail their one item with a one-line ``LatentFileError``
naming the file, never a ``MemoryError`` or a traceback; ``inspect`` lists such a file as a problem
and estimates no memory for it."""
from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import latent_decoder.npyfile as npyfile
from latent_decoder.cli import cli
from latent_decoder.errors import LatentFileError
from latent_decoder.latents import load_latent, parse_latent, read_latent_header

HUGE = (1, 16, 10000, 10000, 10000)  # 3.2e13 bytes of float16


def npy_bytes(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


def header_bytes(shape: tuple[int, ...], descr: str = "<f2", fortran_order: bool = False) -> bytes:
    """A real ``.npy`` 1.0 header, as ``np.save`` writes it, declaring ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
    return buf.getvalue()


def small_latent() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 16, 3, 4, 6)).astype(np.float16)


def forged(shape: tuple[int, ...]) -> bytes:
    """A normal latent's file with its header rewritten to declare ``shape``."""
    good = npy_bytes(small_latent())
    offset = len(header_bytes(small_latent().shape))
    return header_bytes(shape) + good[offset:]


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


def refused(path: Path) -> tuple[str, int, float]:
    """Load ``path`` expecting a ``LatentFileError``: its message, the peak bytes allocated, seconds taken."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(LatentFileError) as info:
            load_latent(path)
        return str(info.value), tracemalloc.get_traced_memory()[1], time.perf_counter() - start
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["step_000.npy.gz", "step_000.npy"])
def test_a_huge_declared_shape_is_refused_before_allocating(tmp_path: Path, name: str):
    path = write(tmp_path / name, forged(HUGE))
    message, peak, seconds = refused(path)
    assert message.startswith(f"{path}: header declares shape [1, 16, 10000, 10000, 10000] float16"), message
    assert "32000000000000 bytes" in message and "limit" in message and "\n" not in message
    assert peak < 4 << 20 and seconds < 5, (peak, seconds)
    with pytest.raises(LatentFileError, match="declares"):
        read_latent_header(path)


@pytest.mark.parametrize("name", ["step_000.npy.gz", "step_000.npy"])
def test_a_declared_size_under_the_limit_but_not_in_the_file_is_truncated(tmp_path: Path, name: str):
    # 4 GiB declared (under MAX_LATENT_BYTES), 2 KiB present: refused without allocating the 4 GiB.
    path = write(tmp_path / name, forged((1, 16, 2048, 256, 256)))
    message, peak, _ = refused(path)
    assert f"{path}: truncated: header declares {16 * 2048 * 256 * 256 * 2} bytes of data" in message, message
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("name", ["step_000.npy.gz", "step_000.npy"])
def test_a_truncated_file_with_a_valid_header(tmp_path: Path, name: str):
    good = npy_bytes(small_latent())
    path = write(tmp_path / name, good[:-100])
    message, _, _ = refused(path)
    assert message.startswith(f"{path}: truncated: header declares 2304 bytes of data, file holds 2204"), message
    if name.endswith(".npy"):
        with pytest.raises(LatentFileError, match="truncated: header declares 2304 bytes of data, file holds 2204"):
            read_latent_header(path)


def test_a_gzip_bomb_is_refused_with_bounded_memory(tmp_path: Path):
    # A header declaring a small latent, then 256 MiB of zeros: a 256 KB file.
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    parts = [packer.compress(npy_bytes(small_latent()))]
    zeros = bytes(1 << 20)
    parts += [packer.compress(zeros) for _ in range(256)]
    parts.append(packer.flush())
    path = tmp_path / "step_000.npy.gz"
    path.write_bytes(b"".join(parts))
    assert path.stat().st_size < 1 << 20
    message, peak, seconds = refused(path)
    assert message.startswith(f"{path}: header declares 2304 bytes of data, the decompressed stream holds more"), \
        message
    assert peak < 8 << 20 and seconds < 5, (peak, seconds)


def test_a_gzip_file_declaring_10_gb_of_zeros_is_refused(tmp_path: Path):
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    payload = packer.compress(header_bytes((10 * 10**9 // 4,), "<f4")) + packer.compress(bytes(1 << 20))
    path = tmp_path / "step_000.npy.gz"
    path.write_bytes(payload + packer.flush())  # 1 MiB of the declared 10 GB
    message, peak, _ = refused(path)
    assert "header declares shape [2500000000] float32, 10000000000 bytes" in message, message
    assert peak < 4 << 20
    with pytest.raises(LatentFileError, match="declares"):
        read_latent_header(path)


def test_a_gzip_header_declaring_more_than_the_file_can_inflate_to(tmp_path: Path):
    # 1 GiB declared (under the limit) in a ~100-byte gzip file: deflate cannot expand that much.
    path = write(tmp_path / "step_000.npy.gz", forged((1, 16, 512, 256, 256)))
    with pytest.raises(LatentFileError, match="truncated: header declares 1073741824 bytes of data, more than a gzip"):
        read_latent_header(path)
    message, peak, _ = refused(path)
    assert "truncated" in message and peak < 4 << 20


@pytest.mark.parametrize("name", ["step_000.npy.gz", "step_000.npy"])
def test_a_header_length_declaring_gigabytes_is_refused_without_reading_it(tmp_path: Path, name: str):
    # .npy 2.0 keeps the header's length in 4 bytes: this one says 2 GiB, and a data stream follows.
    path = write(tmp_path / name, b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + bytes(1 << 20))
    message, peak, _ = refused(path)
    assert message.startswith(f"{path}: not a valid .npy array (header longer than") and "\n" not in message, message
    assert peak < 4 << 20, peak
    with pytest.raises(LatentFileError, match="header longer than"):
        read_latent_header(path)


class _Unpickled:
    """Creates ``marker`` when unpickled: proof that an object array was never unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("name", ["step_000.npy.gz", "step_000.npy"])
def test_object_arrays_are_refused_never_unpickled(tmp_path: Path, name: str):
    marker = tmp_path / "unpickled"
    array = np.empty(2, dtype=object)
    array[:] = [_Unpickled(marker), 1.0]
    path = write(tmp_path / name, npy_bytes(array, allow_pickle=True))
    message, _, _ = refused(path)
    assert message.startswith(f"{path}: ") and "object arrays are refused, never unpickled" in message
    with pytest.raises(LatentFileError, match="never unpickled"):
        read_latent_header(path)
    assert not marker.exists()


def _same(loaded: np.ndarray, reference: np.ndarray) -> None:
    assert loaded.dtype == reference.dtype and loaded.shape == reference.shape
    assert loaded.tobytes(order="A") == reference.tobytes(order="A")
    assert loaded.flags.f_contiguous == reference.flags.f_contiguous and loaded.flags.writeable


@pytest.mark.parametrize("case", ["float16_gz", "float32_npy", "big_endian_fortran_gz", "unbatched_float64_npy",
                                  "two_gzip_members"])
def test_normal_files_still_load_bit_exactly(tmp_path: Path, case: str):
    rng = np.random.default_rng(1)
    array = rng.standard_normal((1, 16, 3, 4, 6))
    array = {"float16_gz": array.astype(np.float16), "float32_npy": array.astype(np.float32),
             "big_endian_fortran_gz": np.asfortranarray(array.astype(">f4")),
             "unbatched_float64_npy": array[0], "two_gzip_members": array.astype(np.float32)}[case]
    payload = npy_bytes(array)
    path = tmp_path / ("step_000.npy" if case.endswith("npy") else "step_000.npy.gz")
    if case == "two_gzip_members":  # gzip.decompress reads every member, and so must the loader
        path.write_bytes(gzip.compress(payload[:1000]) + gzip.compress(payload[1000:]))
    else:
        write(path, payload)
    reference = np.load(io.BytesIO(payload))
    loaded = load_latent(path)
    _same(loaded, reference if reference.ndim == 5 else reference[None])
    assert read_latent_header(path) == (array.shape, array.dtype)
    # The bytes a driver ships to a worker parse the same way.
    _same(parse_latent(path.read_bytes(), path), loaded)


def test_the_limit_is_the_module_constant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = write(tmp_path / "step_000.npy.gz", npy_bytes(small_latent()))
    assert load_latent(path).shape == (1, 16, 3, 4, 6)
    monkeypatch.setattr(npyfile, "MAX_LATENT_BYTES", 1000)
    with pytest.raises(LatentFileError, match=r"2304 bytes .* over the 1000 B limit"):
        load_latent(path)
    with pytest.raises(LatentFileError, match="declares"):
        read_latent_header(path)


@pytest.fixture
def exp_with_huge_step(make_experiment) -> tuple[Path, Path]:
    exp = make_experiment(prompts=1, steps=2, height=32, width=48)
    huge = exp / "latents" / "prompt_000" / "vid_001" / "step_001.npy.gz"
    assert huge.exists()
    write(huge, forged(HUGE))
    return exp, huge


def invoke(caplog, *args: str) -> tuple[int, str]:
    """The CLI in this process: (exit status, what it printed); a traceback it logged is in the output
    too, as it would be on a real process's stderr."""
    with caplog.at_level(logging.INFO, logger="latent_decoder"):
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output + caplog.text


def test_inspect_lists_a_huge_header_as_one_problem_line(exp_with_huge_step, caplog):
    exp, huge = exp_with_huge_step
    code, output = invoke(caplog, "inspect", str(exp))
    assert code == 1, output
    assert "Traceback" not in output
    lines = output.splitlines()
    [problem] = [line for line in lines if str(huge) in line]
    assert problem.startswith("  unreadable: ") and "declares" in problem and "bytes" in problem, problem
    assert "decode memory" not in problem
    # The good step's shape is still listed with a sane estimate; nothing absurd anywhere.
    [good] = [line for line in lines if line.startswith("  [1, 16, 3, 4, 6] float16 x1 ")]
    value, unit = re.search(r"decode memory ~([\d.]+) (B|KiB|MiB|GiB)", good).groups()
    assert unit != "GiB" or float(value) < 100, good
    assert not any(re.search(r"~\d{4,}(\.\d)? GiB", line) for line in lines), lines


def test_decode_fails_only_the_huge_step_without_a_traceback(exp_with_huge_step, caplog):
    exp, huge = exp_with_huge_step
    code, output = invoke(caplog, "decode", str(exp), "--device", "cpu")
    assert code == 1, output
    assert "Traceback" not in output and "MemoryError" not in output
    out_dir = exp / "latents_videos" / "prompt_000" / "vid_001"
    assert (out_dir / "step_000.mp4").stat().st_size > 0
    assert not (out_dir / "step_001.mp4").exists()
    assert "1 ok, 1 failed" in output, output
    # The end-of-run report lists exactly one failure, on one line naming the file and the sizes.
    [failure] = [line for line in output.splitlines() if line.lstrip().startswith("failed ")]
    assert "step_001" in failure and f"{huge}: header declares" in failure and "bytes" in failure, output
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert (summary["successful_steps"], summary["failed_steps"]) == (1, 1)
