"""K sentences of one clip: one call per sentence against all at once and two per call; the cap that the shared
work sets; where and why the probabilities differ (issue 21 item 2). JSON on the last line with --json.

    python -m benchmarks.sentence_batching --width tiny --json
    python -m benchmarks.sentence_batching --width full --json   # the full-width one-layer model, ~6 GB, minutes

Three ways to run K sentences of one clip: ``naive``, one call per sentence (the frames encoded K times);
``all_at_once``, one call with the K sentences in the model's (b k t) batch (``Predictor``'s default); and
``two_per_pass``, two sentences per call with the frames encoded once (``Predictor(captions_per_pass=2)``).

**Differences.** Each batched way's probabilities against the naive loop's, in three precisions of the same
weights: ``float64`` (the whole model, ``.double()``: only the order of sums differs, so any difference above
~1e-12 would be a batching bug), ``float32``, and ``bfloat16`` (the frozen encoders held in bf16 and autocast, as on
the GPU). Each way's refined slot per sentence (``models.hcd.best_query``) is compared too: with random weights the
slots' frame-averaged scores are nearly tied, so a rounding difference can make a batched call refine another slot
than the separate call, and that sentence's mask then differs entirely. Reported per precision: the largest
difference of the probabilities, whether the slots agree, the smallest margin between the best and the second slot,
and the largest difference over the sentences whose slot agrees.

**Cap (Amdahl).** Only the sentence-independent work is shared: VAE latents and CLIP image tokens
(``encode_frames``), the UNet stem (``conv_in`` + ``transformer_in``) and the TCMR stride-4 stem. With ``f`` its
share of a one-sentence call, K batched sentences can be at most ``K / (f + K (1 - f))`` times faster than K calls.
The upsampling to the original size is per sentence (one mask each) and is not shared.

Models: ``--width tiny`` is ``configs/refshapes_tiny.yaml`` over the tiny offline components; ``--width full`` the
paper's configuration at every full width with one layer per UNet block and per encoder
(``benchmarks.full_size.one_layer_configs``, as ``tests/models/test_full_width.py`` builds it). Both have random
weights. One layer per block shrinks the deep encoders (CLIP-H vision keeps 1 of its 32 layers), so ``f`` here is
not the full-size model's; ``benchmarks/frame_flops.py`` counts that one's FLOPs.
"""
import argparse
import json
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.fps_protocol import timed
from benchmarks.full_size import (CAPTIONS, REPO, autocast, build_random_model, load_tokenizers, model_config,
                                  one_layer_configs)
from models.pretrained import read_component_configs
from testing.tiny_weights import build_tiny_weights
from util.nested_tensor import NestedTensor

WAYS = ("naive", "all_at_once", "two_per_pass")
PRECISIONS = ("float64", "float32", "bfloat16")


@dataclass
class Outcome:
    """One way's result for K sentences of a T-frame clip.

    probabilities: float32 [K, T, H0, W0] at the original size; slots: long [K], the refined slot per sentence;
    margins: [K] frame-averaged score of the best slot minus that of the second.
    """
    probabilities: torch.Tensor
    slots: torch.Tensor
    margins: torch.Tensor


@contextmanager
def held_in(model: torch.nn.Module, precision: str) -> Iterator[None]:
    """``model`` held in ``precision`` for the block, then given back its own tensors: float64 or float32
    throughout, or float32 with the frozen encoders in bf16 (``bfloat16``, to run under autocast). The tensors
    held before are kept aside and put back, so the model leaves the block bit for bit as it came (a float32 ->
    bf16 -> float32 round trip would round the frozen weights for good); meanwhile both copies are in memory."""
    places = [(module, store, name) for module in model.modules() for store in ("_parameters", "_buffers")
              for name, tensor in getattr(module, store).items() if tensor is not None]
    originals = [getattr(module, store)[name].data for module, store, name in places]
    model.double() if precision == "float64" else model.float()
    if precision == "bfloat16":
        model.backbone.frozen.to(torch.bfloat16)
    try:
        yield
    finally:
        for (module, store, name), original in zip(places, originals):
            if store == "_parameters":
                module._parameters[name].data = original
            else:
                module._buffers[name] = original


def calls(sentences: list[str], way: str) -> list[list[str]]:
    """The sentences of each forward call of ``way``."""
    step = {"naive": 1, "all_at_once": len(sentences), "two_per_pass": 2}[way]
    return [sentences[start:start + step] for start in range(0, len(sentences), step)]


def run_way(model, samples: NestedTensor, sentences: list[str], way: str, resized: tuple[int, int],
            original: tuple[int, int], precision: str) -> Outcome:
    """``way`` on one clip: the model forward per call (the frames encoded once per way but ``naive``), logits
    cropped to ``resized`` (H, W before padding) and upsampled to ``original``."""
    height, width = resized
    reuse = model.backbone.reusing_frames() if way == "two_per_pass" else nullcontext()
    device = samples.tensors.device
    samples = NestedTensor(samples.tensors.to(model.dtype), samples.mask)
    with torch.inference_mode(), autocast(device, "bfloat16" if precision == "bfloat16" else "float32"), reuse:
        outputs = [model(samples, chunk) for chunk in calls(sentences, way)]
        logits = torch.cat([o["pred_masks"] for o in outputs])[:, :, :height, :width]  # [K, T, h, w]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        probabilities = F.interpolate(logits, size=original, mode="bilinear", align_corners=False).sigmoid()
        scores = torch.cat([o["pred_logits"] for o in outputs]).float().sigmoid().mean(dim=1)[..., 0]  # [K, Q]
        best_two = scores.topk(2, dim=1).values
    return Outcome(probabilities.float(), torch.cat([o["selected_query"] for o in outputs]),
                   best_two[:, 0] - best_two[:, 1])


def differences(outcomes: dict[str, Outcome]) -> dict:
    """Each batched way against ``naive``: largest probability difference, slots agree, largest difference over
    the sentences whose slot agrees, and the smallest best-vs-second score margin of the naive calls."""
    naive = outcomes["naive"]
    result = {"min_slot_margin": float(naive.margins.min())}
    for way in WAYS[1:]:
        outcome = outcomes[way]
        per_sentence = (outcome.probabilities - naive.probabilities).abs().flatten(1).amax(dim=1)  # [K]
        agree = outcome.slots == naive.slots
        result[way] = {"max_abs_diff": float(per_sentence.max()), "slots_agree": agree.tolist(),
                       "max_abs_diff_same_slot": float(per_sentence[agree].max()) if agree.any() else None}
    return result


def timings(model, samples: NestedTensor, sentences: list[str], resized, original, precision: str,
            repeats: int) -> dict[str, float]:
    """Median seconds of each way over ``repeats`` interleaved rounds, after one untimed run of each (first
    calls at a new batch size pay the allocator's and the kernels' setup; timing them would favour the way that
    happened to run first)."""
    runs = {way: [] for way in WAYS}
    for round_index in range(repeats + 1):
        for way in WAYS:
            _, seconds = timed(lambda: run_way(model, samples, sentences, way, resized, original, precision),
                               samples.tensors.device)
            if round_index > 0:
                runs[way].append(seconds)
    return {way: statistics.median(values) for way, values in runs.items()}


def shared_seconds(model, samples: NestedTensor, precision: str, repeats: int) -> dict[str, float]:
    """Median seconds of the sentence-independent stages of one clip: ``encode_frames`` (VAE + CLIP vision),
    the UNet stem and the TCMR stride-4 stem."""
    backbone, device = model.backbone, samples.tensors.device
    frames = samples.tensors.to(model.dtype)
    with torch.inference_mode(), autocast(device, "bfloat16" if precision == "bfloat16" else "float32"):
        encoding = backbone.encode_frames(frames, samples.mask)
        stages = {"encode_frames": lambda: backbone.encode_frames(frames, samples.mask),
                  "unet_stem": lambda: backbone.unet_features.stem(encoding.latents),
                  "tcmr_stem": lambda: backbone.temporal_stem(encoding.frames)}
        return {name: statistics.median(timed(fn, device)[1] for _ in range(repeats))
                for name, fn in stages.items()}


def amdahl_cap(shared_fraction: float, sentences: int) -> float:
    """The largest speed-up of K batched sentences over K calls when ``shared_fraction`` of a call is shared."""
    return sentences / (shared_fraction + sentences * (1 - shared_fraction))


def speed(model, samples: NestedTensor, sentences: list[str], resized, original, precision: str,
          repeats: int) -> dict:
    """Seconds of the three ways, their speed-ups over ``naive``, the shared share ``f`` of a one-sentence call,
    the cap it sets and each speed-up as a fraction of the cap."""
    seconds = timings(model, samples, sentences, resized, original, precision, repeats)
    stages = shared_seconds(model, samples, precision, repeats)
    one_call = seconds["naive"] / len(sentences)
    fraction = min(sum(stages.values()) / one_call, 1.0)
    cap = amdahl_cap(fraction, len(sentences))
    speedups = {way: seconds["naive"] / seconds[way] for way in WAYS[1:]}
    return {"seconds": seconds, "shared_stage_seconds": stages, "shared_fraction": fraction, "cap": cap,
            "speedup": speedups, "fraction_of_cap": {way: value / cap for way, value in speedups.items()}}


def random_clip(frames: int, size: tuple[int, int], padded: tuple[int, int], device: torch.device,
                seed: int = 0) -> NestedTensor:
    """Random normalised frames [1, T, 3, *padded] of ``size`` (H, W) at the top left, with their padding mask."""
    generator = torch.Generator().manual_seed(seed)
    tensors = torch.zeros(1, frames, 3, *padded)
    tensors[..., :size[0], :size[1]] = torch.randn(1, frames, 3, *size, generator=generator)
    mask = torch.ones(1, frames, *padded, dtype=torch.bool)
    mask[..., :size[0], :size[1]] = False
    return NestedTensor(tensors, mask).to(device)


def build(width: str, tmp: Path):
    """The model of ``--width``, float32, eval mode."""
    if width == "full":
        model, _, _ = build_random_model(model_config("float32"), torch.device("cpu"), "float32", one_layer_configs())
    else:
        build_tiny_weights(tmp, seed=0)
        model, _, _ = build_random_model(model_config("float32", config=REPO / "configs" / "refshapes_tiny.yaml"),
                                         torch.device("cpu"), "float32", read_component_configs(tmp),
                                         load_tokenizers(tmp))
    return model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", choices=("tiny", "full"), default="tiny",
                        help="tiny model, or the full widths with one layer per block (default tiny)")
    parser.add_argument("--frames", type=int, default=3, help="frames of the clip (default 3)")
    parser.add_argument("--size", type=int, nargs=2, default=[56, 88], metavar=("H", "W"),
                        help="frame size before padding to multiples of 32 (default 56 88: padded to 64 x 96)")
    parser.add_argument("--sentences", type=int, default=4, help=f"sentences K, at most {len(CAPTIONS)} (default 4)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="precisions of the difference comparison (default all three)")
    parser.add_argument("--timed_precision", choices=PRECISIONS, default="float32",
                        help="the precision in which the ways are timed (default float32)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds, medians reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object on the last line")
    args = parser.parse_args(argv)
    if not 2 <= args.sentences <= len(CAPTIONS) or args.frames < 1 or args.repeat < 1:
        parser.error(f"--sentences must be 2..{len(CAPTIONS)}, --frames and --repeat at least 1")
    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    padded = tuple(-(-side // 32) * 32 for side in size)
    original = (2 * size[0], 2 * size[1])
    sentences = CAPTIONS[:args.sentences]
    samples = random_clip(args.frames, size, padded, torch.device("cpu"))

    with tempfile.TemporaryDirectory() as tmp:
        model = build(args.width, Path(tmp))
    summary = {"width": args.width, "frames": args.frames, "size": list(size), "sentences": len(sentences),
               "differences": {}}
    for precision in args.precisions:
        with held_in(model, precision):
            outcomes = {way: run_way(model, samples, sentences, way, size, original, precision) for way in WAYS}
        summary["differences"][precision] = differences(outcomes)
        print(f"[{precision}] {json.dumps(summary['differences'][precision])}", flush=True)
    with held_in(model, args.timed_precision):
        summary["speed"] = {"precision": args.timed_precision,
                            **speed(model, samples, sentences, size, original, args.timed_precision, args.repeat)}
    print(f"[speed] {json.dumps(summary['speed'])}", flush=True)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
