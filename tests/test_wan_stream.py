"""``wan_stream`` is the same function as diffusers' ``AutoencoderKLWan.decode`` plus the worker's uint8
conversion: real diffusers VAEs (random weights, strict float32 on CPU) decode the same latent both ways."""
from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.vae import DecoderOutput

from latent_decoder.synthetic import build_tiny_wan_vae
from latent_decoder.memory_count import LiveTensorBytes
from latent_decoder.settings import OutputSettings
from latent_decoder.wan_lean import lean_decoder
from latent_decoder.worker import DecodeWorker
from latent_decoder.wan_stream import (NonFiniteOutput, can_stream, decode_chunks, decode_to_device_uint8,
                                       decode_to_uint8, prepare_for_speed, streams_correctly)

TOLERANCE = 1e-3  # max abs diff in [-1, 1] space


def _wan21() -> Any:
    return build_tiny_wan_vae(seed=21)


def _wan22() -> Any:
    return build_tiny_wan_vae(seed=22, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                              scale_factor_spatial=16)


def _mid() -> Any:
    """Wan2.1's default structure (dim_mult [1, 2, 4, 4], 2 res blocks per stage) at a third of its width."""
    torch.manual_seed(3)
    return AutoencoderKLWan(base_dim=32).eval()


MODELS = {"wan2.1": (_wan21, (1, 16, 4, 4, 6)), "wan2.2": (_wan22, (1, 48, 4, 4, 6)), "mid": (_mid, (1, 16, 3, 8, 8))}
TINY = ["wan2.1", "wan2.2"]


class Case:
    """A VAE, a latent and diffusers' own decode of it."""

    def __init__(self, name: str) -> None:
        build, shape = MODELS[name]
        self.vae = build()
        self.z = torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 2.0
        self.reference = reference(self.vae, self.z)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest) -> Case:
    return Case(request.param)


@pytest.fixture(scope="module", params=TINY)
def tiny(request: pytest.FixtureRequest) -> Case:
    return Case(request.param)


def reference(vae: Any, z: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return vae.decode(z).sample


def streamed(vae: Any, z: torch.Tensor, frames_per_call: int = 1) -> tuple[torch.Tensor, list[int]]:
    """The concatenated pieces of ``decode_chunks`` and the frame count of each."""
    with torch.inference_mode():
        pieces = list(decode_chunks(vae, z, frames_per_call))
    return torch.cat(pieces, 2), [p.shape[2] for p in pieces]


def rounded(video: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    """The worker's conversion of a whole diffusers video, written out independently."""
    video = video[0].permute(1, 0, 2, 3).float()
    if scale != 1.0:
        video = F.interpolate(video, scale_factor=scale, mode="bilinear", antialias=scale < 1.0, align_corners=False)
    return ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def assert_frames_match(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal but for rare off-by-one at rounding ties: <= 1 level on < 0.1% of values."""
    assert got.dtype == np.uint8 and got.shape == expected.shape
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1
    assert np.count_nonzero(diff) < 1e-3 * diff.size


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.parametrize("frames_per_call", [1, 2, 4, 16])
def test_pieces_are_diffusers_decode(case: Case, frames_per_call: int) -> None:
    """One frame per stage call (the default), more, or every latent frame after the first in one
    call (16): the same video, handed out in pieces of at most that many frames."""
    video, frames = streamed(case.vae, case.z, frames_per_call)
    later = case.z.shape[2] - 1
    assert frames[0] == 1 and sum(frames) == 1 + 4 * later  # the first latent frame alone, as in diffusers
    assert max(frames[1:]) == min(frames_per_call, 4 * later)
    assert max_diff(video, case.reference) <= TOLERANCE
    assert float(case.reference.std()) > 0.05  # a real picture, not a flat one that anything would match


def test_uint8_frames_are_the_rounded_decode(tiny: Case) -> None:
    frames = decode_to_uint8(tiny.vae, tiny.z)
    assert_frames_match(frames, rounded(tiny.reference))


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_scale_resizes_as_the_worker_does(tiny: Case, scale: float) -> None:
    assert_frames_match(decode_to_uint8(tiny.vae, tiny.z, scale=scale), rounded(tiny.reference, scale))


def test_channels_last_3d_weights_keep_the_function(tiny: Case) -> None:
    vae = copy.deepcopy(tiny.vae)
    prepare_for_speed(vae, "cpu")
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs)
    assert max_diff(streamed(vae, tiny.z)[0], tiny.reference) <= TOLERANCE
    assert_frames_match(decode_to_uint8(vae, tiny.z), rounded(tiny.reference))


def test_lean_decoder_keeps_the_function(case: Case) -> None:
    vae = copy.deepcopy(case.vae)
    lean_decoder(vae)
    lean = [m for m in vae.modules() if isinstance(getattr(m, "forward", None), types.MethodType)
            and m.forward.__func__ is not type(m).forward]
    assert {type(m).__name__ for m in lean} >= {"WanCausalConv3d", "WanResidualBlock", "WanUpsample"}
    assert max_diff(streamed(vae, case.z)[0], case.reference) <= TOLERANCE
    assert max_diff(reference(vae, case.z), case.reference) <= TOLERANCE  # vae.decode goes through them too
    assert not any(isinstance(m.__dict__.get("forward"), types.MethodType) for m in vae.encoder.modules())


def lean_modules(vae: Any) -> list[Any]:
    return [m for m in vae.decoder.modules() if isinstance(m.__dict__.get("forward"), types.MethodType)]


def test_self_check_takes_the_stream_where_it_is_diffusers_decode(tiny: Case) -> None:
    vae = copy.deepcopy(tiny.vae)
    assert streams_correctly(vae, "cpu")
    assert lean_modules(vae)  # the worker's decode is set up
    assert max_diff(streamed(vae, tiny.z)[0], tiny.reference) <= TOLERANCE


def test_self_check_falls_back_where_diffusers_decodes_otherwise(tiny: Case) -> None:
    """A diffusers whose Wan decode differs from the protocol the stream follows (here: one that
    drops the first frame) gets its own vae.decode, said in a warning, with its modules untouched."""
    vae = copy.deepcopy(tiny.vae)
    own = vae._decode
    vae._decode = lambda z, return_dict=True: DecoderOutput(sample=own(z).sample[:, :, 1:])
    with pytest.warns(UserWarning, match="does not reproduce vae.decode .*shape"):
        assert not streams_correctly(vae, "cpu")
    assert not lean_modules(vae)

    vae = copy.deepcopy(tiny.vae)
    other = vae._decode
    vae._decode = lambda z, return_dict=True: DecoderOutput(sample=other(z).sample.flip(2))  # same shape
    with pytest.warns(UserWarning, match="max difference"):
        assert not streams_correctly(vae, "cpu")


def restarting_after_two_frames(vae: Any) -> Any:
    """A ``_decode`` that keeps only one latent frame of context: latent frames from the third on are
    decoded as if the video began one latent frame earlier. Exact for one or two latent frames."""
    own = vae._decode

    def decode(z: torch.Tensor, return_dict: bool = True) -> DecoderOutput:
        video = own(z).sample
        if z.shape[2] > 2:
            video = torch.cat([video[:, :, :5], own(z[:, :, 1:]).sample[:, :, 1:]], 2)
        return DecoderOutput(sample=video)
    return decode


def test_self_check_refuses_a_decode_that_differs_only_from_the_third_latent_frame(tiny: Case) -> None:
    """The steady-state cache is met only from the third latent frame on: a check on two latent frames
    would take this VAE's stream for its decode."""
    vae = copy.deepcopy(tiny.vae)
    vae._decode = restarting_after_two_frames(vae)
    two = tiny.z[:, :, :2]
    assert max_diff(reference(vae, two), reference(tiny.vae, two)) == 0  # a two-frame check would pass
    assert max_diff(reference(vae, tiny.z), tiny.reference) > 1e-2
    with pytest.warns(UserWarning, match="max difference"):
        assert not streams_correctly(vae, "cpu")
    assert not lean_modules(vae)


def offset_decode(vae: Any, offset: float) -> Any:
    own = types.MethodType(type(vae)._decode, vae)
    return lambda z, return_dict=True: DecoderOutput(sample=own(z).sample + offset)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_self_check_bound_is_1e_3_in_float32_whatever_the_dtype(tiny: Case, dtype: torch.dtype) -> None:
    """A bfloat16 VAE is checked on a float32 copy of its weights, so the same 1e-3 bound applies; its
    weights come back bit for bit, in bfloat16."""
    vae = copy.deepcopy(tiny.vae).to(dtype)
    weights = {name: p.clone() for name, p in vae.state_dict().items()}
    vae._decode = offset_decode(vae, 5e-3)
    with pytest.warns(UserWarning, match="max difference 0.005"):
        assert not streams_correctly(vae, "cpu")
    vae._decode = offset_decode(vae, 5e-4)
    assert streams_correctly(vae, "cpu") and lean_modules(vae)
    assert all(torch.equal(p, weights[name]) and p.dtype == dtype for name, p in vae.state_dict().items())


FP32_PRECISION = [(torch.backends.cudnn.conv, "tf32"), (torch.backends.cuda.matmul, "tf32"),
                  (torch.backends.mkldnn.conv, "bf16"), (torch.backends.mkldnn.matmul, "tf32")]


@pytest.fixture
def reduced_precision_flags() -> Any:
    """Every float32 precision flag the self-check touches set to a reduced precision, as a user may
    have set them; set back after."""
    saved = [flag.fp32_precision for flag, _ in FP32_PRECISION]
    for flag, value in FP32_PRECISION:
        flag.fp32_precision = value
    yield [value for _, value in FP32_PRECISION]
    for (flag, _), value in zip(FP32_PRECISION, saved):
        flag.fp32_precision = value


def test_self_check_runs_in_strict_float32_and_restores_the_flags(tiny: Case, reduced_precision_flags: list) -> None:
    vae = copy.deepcopy(tiny.vae)
    own = vae._decode
    seen: list[list[str]] = []

    def watched(z: torch.Tensor, return_dict: bool = True) -> DecoderOutput:
        seen.append([flag.fp32_precision for flag, _ in FP32_PRECISION])
        return own(z)
    vae._decode = watched
    assert streams_correctly(vae, "cpu")
    assert seen == [["ieee"] * len(FP32_PRECISION)]
    assert [flag.fp32_precision for flag, _ in FP32_PRECISION] == reduced_precision_flags
    vae = copy.deepcopy(tiny.vae)
    vae._decode = lambda z, return_dict=True: 1 / 0
    with pytest.warns(UserWarning, match="ZeroDivisionError"):
        assert not streams_correctly(vae, "cpu")
    assert [flag.fp32_precision for flag, _ in FP32_PRECISION] == reduced_precision_flags


class Nested(torch.nn.Module):
    """A decoder of another structure (as a diffusers refactor might make it): the same function, its
    stages one level down, where the stream does not look for them."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


def test_self_check_that_raises_means_vae_decode_and_one_warning(tiny: Case) -> None:
    import diffusers

    vae = copy.deepcopy(tiny.vae)
    vae.decoder = Nested(vae.decoder)
    with pytest.warns(UserWarning) as caught:
        assert not streams_correctly(vae, "cpu")
    [warning] = caught
    assert f"diffusers {diffusers.__version__}" in str(warning.message) and "AttributeError" in str(warning.message)
    assert "\n" not in str(warning.message)
    assert not lean_modules(vae)
    assert max_diff(reference(vae, tiny.z), tiny.reference) == 0


def test_a_worker_on_a_diffusers_whose_wan_internals_differ_decodes_with_vae_decode(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A diffusers without the ``unpatchify`` the stream imports (its Wan2.1 decode does not need it):
    the worker starts, says so once, and decodes this diffusers' own way."""
    import diffusers
    from diffusers.models.autoencoders import autoencoder_kl_wan

    monkeypatch.delattr(autoencoder_kl_wan, "unpatchify")
    with pytest.warns(UserWarning) as caught:
        worker = DecodeWorker(OutputSettings(model=str(tiny_model_dir)), device="cpu")
    [warning] = [w for w in caught if "vae.decode" in str(w.message)]
    assert f"diffusers {diffusers.__version__}" in str(warning.message) and "ImportError" in str(warning.message)
    assert not worker.streams and not lean_modules(worker.vae)
    latent = np.random.default_rng(3).standard_normal((1, 16, 3, 4, 6), dtype=np.float32)
    with torch.inference_mode():
        z = worker.rule.to_decoder_input(torch.from_numpy(latent), worker.context("<array>"))
        expected = rounded(worker.vae.decode(z).sample)
    assert_frames_match(worker.decode(latent), expected)


def test_the_worker_streams_a_wan_vae_it_has_checked(tiny_model_dir: Path) -> None:
    worker = DecodeWorker(OutputSettings(model=str(tiny_model_dir)), device="cpu")
    assert worker.streams and lean_modules(worker.vae)
    latent = np.random.default_rng(3).standard_normal((1, 16, 3, 4, 6), dtype=np.float32)
    with torch.inference_mode():
        z = worker.rule.to_decoder_input(torch.from_numpy(latent), worker.context())
        expected = rounded(worker.vae.decode(z).sample)
    assert_frames_match(worker.decode(latent), expected)


def test_lean_decoder_keeps_the_tiled_decode() -> None:
    """The out-of-memory fallback decodes tiles through the same (now lean) modules."""
    case = Case("mid")
    plain, lean = case.vae, copy.deepcopy(case.vae)
    lean_decoder(lean)
    for vae in (plain, lean):
        vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48, tile_sample_stride_height=32,
                          tile_sample_stride_width=32)
    tiled = reference(plain, case.z)
    assert max_diff(tiled, case.reference) > 1e-3  # tiles really were blended: a different function
    assert max_diff(reference(lean, case.z), tiled) <= TOLERANCE


def counted_peak(vae: Any, z: torch.Tensor, decode: Any) -> int:
    with torch.inference_mode(), LiveTensorBytes() as count:
        decode(vae, z)
    assert count.live == 0  # nothing left behind: the cache is freed, the buffer and frames dropped
    return count.peak


def test_streaming_keeps_one_frame_per_stage_on_the_device() -> None:
    """Counted from shapes on the meta device, Wan2.1's real structure at 480x848: one frame per stage
    call needs far less than diffusers' decode, and the frames given to a call are what sets it."""
    with torch.device("meta"):
        vae = AutoencoderKLWan().eval().to(torch.bfloat16)
    z = torch.empty((1, 16, 4, 60, 106), device="meta", dtype=torch.bfloat16)
    plain = counted_peak(vae, z, lambda v, x: v.decode(x).sample)
    four = counted_peak(vae, z, lambda v, x: decode_to_device_uint8(v, x, frames_per_call=4))
    one = counted_peak(vae, z, decode_to_device_uint8)
    lean_decoder(vae)
    lean = counted_peak(vae, z, decode_to_device_uint8)
    assert one < 0.75 * four and one < 0.75 * plain
    assert lean < one - 256 * 2**20  # the padded copy, an old cache and a norm copy of 96-channel 480x848 frames


def test_bfloat16_gives_the_rounded_bfloat16_decode(tiny: Case) -> None:
    vae, z = copy.deepcopy(tiny.vae).to(torch.bfloat16), tiny.z.to(torch.bfloat16)
    assert_frames_match(decode_to_uint8(vae, z), rounded(reference(vae, z)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_worker_path_in_strict_fp32_and_bfloat16() -> None:
    """What the worker runs on CUDA (lean modules, NDHWC kernels, autotuned algorithms) may change the
    arithmetic: still the same function in strict float32, and the same frames in bfloat16."""
    backends = torch.backends
    saved = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32, backends.cudnn.benchmark
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = backends.cudnn.benchmark = False
    try:
        for build, shape in MODELS.values():
            for dtype in (torch.float32, torch.bfloat16):
                vae = build().to("cuda", dtype)
                z = torch.randn(shape, generator=torch.Generator().manual_seed(7)).mul_(2.0).to("cuda", dtype)
                expected = reference(vae, z)
                lean_decoder(vae)
                prepare_for_speed(vae, "cuda")
                assert backends.cudnn.benchmark
                if dtype == torch.float32:
                    assert max_diff(streamed(vae, z)[0], expected) <= TOLERANCE
                assert_frames_match(decode_to_uint8(vae, z), rounded(expected))
                backends.cudnn.benchmark = False
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32, backends.cudnn.benchmark = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_self_check_takes_the_full_size_wan_vae_with_tf32_on(dtype: torch.dtype) -> None:
    """At load of a full-size Wan2.1 VAE on CUDA, with TF32 convolutions on (PyTorch's default) and the
    worker's NDHWC kernels: the check runs in strict float32, so kernel choice does not refuse the
    stream; the flags and the VAE's dtype are as they were after."""
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision, torch.backends.cudnn.benchmark
    conv.fp32_precision = "tf32"
    try:
        torch.manual_seed(0)
        vae = AutoencoderKLWan().eval().to("cuda", dtype)
        assert streams_correctly(vae, "cuda")
        assert conv.fp32_precision == "tf32" and next(vae.parameters()).dtype == dtype
    finally:
        conv.fp32_precision, torch.backends.cudnn.benchmark = saved


def test_a_stale_cache_is_reset_before_and_freed_after(tiny: Case) -> None:
    vae = tiny.vae
    with torch.inference_mode():  # leave another latent's first frame in the causal cache
        vae.clear_cache()
        other = vae.post_quant_conv(torch.randn_like(tiny.z))[:, :, :1]
        vae.decoder(other, feat_cache=vae._feat_map, feat_idx=[0], first_chunk=True)
    assert any(f is not None for f in vae._feat_map)
    assert_frames_match(decode_to_uint8(vae, tiny.z), rounded(tiny.reference))
    assert all(f is None for f in vae._feat_map)
    assert_frames_match(decode_to_uint8(vae, tiny.z), rounded(tiny.reference))


def test_tiling_falls_back_to_vae_decode() -> None:
    vae, z = _wan21(), torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(5))
    untiled = reference(vae, z)
    vae.enable_tiling(tile_sample_min_height=24, tile_sample_min_width=24, tile_sample_stride_height=16,
                      tile_sample_stride_width=16)
    tiled = reference(vae, z)
    assert not can_stream(vae)
    assert not np.array_equal(rounded(tiled), rounded(untiled))  # the fallback is observable
    assert_frames_match(decode_to_uint8(vae, z), rounded(tiled))


def test_slicing_and_other_vaes_use_vae_decode() -> None:
    vae = _wan21()
    assert can_stream(vae)
    vae.enable_slicing()
    assert not can_stream(vae)

    class OtherVAE:
        def decode(self, z: torch.Tensor, return_dict: bool = True) -> tuple[torch.Tensor]:
            return (torch.tanh(z[:, :3]),)

    z = torch.randn(1, 4, 2, 5, 7, generator=torch.Generator().manual_seed(2))
    assert_frames_match(decode_to_uint8(OtherVAE(), z), rounded(torch.tanh(z[:, :3])))


def test_out_is_filled_in_place_and_checked(tiny: Case) -> None:
    expected = rounded(tiny.reference)
    out = np.zeros(expected.shape, np.uint8)
    assert decode_to_uint8(tiny.vae, tiny.z, out=out) is out
    assert_frames_match(out, expected)
    try:
        decode_to_uint8(tiny.vae, tiny.z, out=np.zeros((1, *expected.shape[1:]), np.uint8))
    except ValueError as exc:
        assert "shape" in str(exc)
        assert all(f is None for f in tiny.vae._feat_map)  # freed at once, while the caller still holds the error
    else:
        pytest.fail("an out of the wrong shape was accepted")


def test_nan_output_is_refused() -> None:
    vae = _wan21()
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutput, match="NaN"):
        decode_to_uint8(vae, torch.randn(1, 16, 2, 4, 6))


def test_only_one_latent_at_a_time() -> None:
    with pytest.raises(ValueError, match=r"\[1, C, T, H, W\]"):
        decode_to_uint8(_wan21(), torch.randn(2, 16, 2, 4, 6))


def test_a_vae_of_a_config_checked_before_takes_the_verdict_without_decoding(tiny: Case,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The self-check runs once per VAE config, device type and diffusers code in a process: another VAE
    of that config (other weights) streams without a check of its own, and a refusal holds for it too;
    code replaced in the process, or an instance with code of its own, is checked again."""
    from diffusers.models.autoencoders import autoencoder_kl_wan

    from latent_decoder import wan_stream

    monkeypatch.setattr(wan_stream, "_VERDICTS", {})
    checks: list[int] = []
    real_chunks = wan_stream.decode_chunks

    def counted_chunks(*args: Any, **kwargs: Any) -> Any:
        checks.append(1)
        return real_chunks(*args, **kwargs)
    monkeypatch.setattr(wan_stream, "decode_chunks", counted_chunks)

    def other_weights() -> Any:
        vae = copy.deepcopy(tiny.vae)
        with torch.no_grad():
            for p in vae.parameters():
                p.add_(0.01 * torch.randn_like(p))
        return vae

    assert streams_correctly(copy.deepcopy(tiny.vae), "cpu") and len(checks) == 1
    second = other_weights()
    plain = copy.deepcopy(second)
    assert streams_correctly(second, "cpu") and len(checks) == 1  # the verdict, no check
    assert lean_modules(second) and max_diff(streamed(second, tiny.z)[0], reference(plain, tiny.z)) <= TOLERANCE

    own = copy.deepcopy(tiny.vae)
    own._decode = own._decode  # a method set on the instance: checked each time
    assert streams_correctly(own, "cpu") and len(checks) == 2
    real_unpatchify = autoencoder_kl_wan.unpatchify
    monkeypatch.setattr(autoencoder_kl_wan, "unpatchify", lambda *args, **kwargs: real_unpatchify(*args, **kwargs))
    assert streams_correctly(other_weights(), "cpu") and len(checks) == 3  # diffusers' code replaced

    real_decode = type(tiny.vae)._decode
    monkeypatch.setattr(type(tiny.vae), "_decode",
                        lambda self, z, return_dict=True: DecoderOutput(sample=real_decode(self, z).sample + 5e-3))
    with pytest.warns(UserWarning, match="max difference"):
        assert not streams_correctly(other_weights(), "cpu")
    refused = other_weights()
    assert not streams_correctly(refused, "cpu") and len(checks) == 4 and not lean_modules(refused)
