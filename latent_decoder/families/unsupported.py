"""Video pipelines of diffusers 0.42.1 that no rule decodes, each with the reason and what to use instead.

``detect`` refuses a model folder naming one of these (one line, exit 2) unless ``--family`` picks a
rule; the README's table lists them with the same reasons. (The image-VAE pipelines, AnimateDiff and
the like, need a VAE class no rule decodes, so they are refused by that.)
"""
from __future__ import annotations

_UPSAMPLER = ("no denoising loop: it upsamples a finished latent, so there are no per-step latents; decode the "
              "latents of the pipeline that made them")
_DFR = ("its loop denoises a padded canvas with keyframe slots, cut apart after the loop by call arguments no "
        "experiment stores (_unpack_video_and_slots, trim_canvas); --family ltx2-conditioned decodes a stored "
        "step's video tokens as LTX-2's")

UNSUPPORTED: dict[str, str] = {
    "LTXLatentUpsamplePipeline": _UPSAMPLER,
    "LTX2LatentUpsamplePipeline": _UPSAMPLER,
    "LTX2DFRPipeline": _DFR,
    "LTX2DFRTemporalRefinePipeline": _DFR,
    "LTX2HDRPipeline": ("its frames are HDR (the VAE's LogC3 output expanded to linear light), which 8-bit video "
                        "cannot hold; --family ltx2-conditioned shows the VAE's LogC3-encoded frames"),
    "Kandinsky6SRPipeline": ("it refines an input video tile by tile without callback_on_step_end (a step's latent is "
                             "one tile of many, blended after decoding) on its Kandinsky6SRVAE; decode the video it "
                             "upscales instead"),
    "BriaFiboPipeline": "an image pipeline (one frame through the Wan VAE, packed image tokens), not a video pipeline",
    "BriaFiboEditPipeline": "an image pipeline (one frame through the Wan VAE, packed image tokens), not a video "
                            "pipeline",
}
