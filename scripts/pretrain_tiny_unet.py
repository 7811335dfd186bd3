"""Pretrain the UNet of a tiny weights folder as a text-conditioned video denoiser (see testing/unet_pretraining.py).

    python -m scripts.pretrain_tiny_unet --weights weight_tiny --data_root data/refshapes

Run it after scripts/pretrain_tiny_vae.py: the latents are those of ``<weights>/vae``. Training clips come from
the train split only (its videos and referring expressions). The UNet in ``<weights>/unet`` is replaced
atomically; ``<weights>/unet/pretraining.json`` records what was done (``loss_curve``: the mean denoising loss of
each tenth of the run, ``first_loss`` and ``last_loss`` its ends), and a folder that already has it is left alone.
"""
import argparse
import json
import random
import time
from pathlib import Path


import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from datasets.ytvos import load_frames, read_meta_expressions, sample_clip_indices
from testing.unet_pretraining import caption_variants, encode_captions, encode_clips, pretrain_unet
from util.atomic_write import atomic_directory

RECORD = "pretraining.json"
MAX_SKIP = 3  # local frame offsets of a clip, as configs/refshapes_tiny.yaml samples training clips
CURVE_POINTS = 10


def sample_clips(data_root: Path, videos: dict, count: int, num_frames: int, size: int,
                 rng: random.Random) -> tuple[torch.Tensor, list[str]]:
    """``count`` training clips, the videos taken in turn in a shuffled order, each around a random anchor.

    Returns frames [count, T, 3, size, size] in [0, 1] and the video of each clip.
    """
    order = rng.sample(sorted(videos), len(videos))
    clips, names = [], []
    for index in range(count):
        video = order[index % len(order)]
        frame_names = videos[video]["frames"]
        indices = sample_clip_indices(len(frame_names), rng.randrange(len(frame_names)), num_frames, MAX_SKIP, rng)
        frames = load_frames(data_root, "train", video, [frame_names[i] for i in indices])
        clips.append(np.stack([np.asarray(frame.resize((size, size))) for frame in frames]))
        names.append(video)
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255, names


def curve(losses: list[float], points: int) -> list[float]:
    """Mean loss over each of ``points`` equal stretches of the run."""
    return [float(np.mean(part)) for part in np.array_split(np.array(losses), points) if len(part)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="tiny weights folder (from scripts/make_tiny_weights.py, "
                                                         "its VAE pretrained by scripts/pretrain_tiny_vae.py)")
    parser.add_argument("--data_root", required=True, help="dataset in the Ref-YouTube-VOS layout; clips and "
                                                           "captions come from its train split only")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps")
    parser.add_argument("--clips", type=int, default=200, help="training clips, encoded once up front")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip (T)")
    parser.add_argument("--size", type=int, default=128, help="frames are resized to SIZE x SIZE pixels "
                                                              "(latents of SIZE/8)")
    parser.add_argument("--batch_size", type=int, default=4, help="clips per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, decayed to zero by a cosine")
    parser.add_argument("--max_join", type=int, default=1, help="captions are one referring expression of the "
                                                                "video, or with N > 1 also 2..N of them joined")
    parser.add_argument("--caption_dropout", type=float, default=0.1,
                        help="fraction of the samples conditioned on the empty caption")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips, captions, noise and timesteps")
    args = parser.parse_args()
    weights = Path(args.weights)
    unet_dir = weights / "unet"
    if (unet_dir / RECORD).is_file():
        print(f"{unet_dir} is already pretrained ({unet_dir / RECORD}); nothing to do")
        return
    if not (weights / "vae" / RECORD).is_file():
        print(f"note: {weights / 'vae'} is not pretrained; run `python -m scripts.pretrain_tiny_vae` first for latents "
              f"that carry the image")
    started = time.time()
    rng = random.Random(args.seed)
    videos = read_meta_expressions(args.data_root, "train")
    clips, clip_videos = sample_clips(Path(args.data_root), videos, args.clips, args.frames, args.size, rng)
    vae = AutoencoderKL.from_pretrained(weights / "vae", local_files_only=True).eval()
    latents = encode_clips(vae, clips)

    captions, rows = [], {}
    for video in sorted(set(clip_videos)):
        expressions = [entry["exp"] for entry in videos[video]["expressions"].values()]
        variants = caption_variants(expressions, args.max_join, len(expressions), rng)
        rows[video] = list(range(len(captions), len(captions) + len(variants)))
        captions += variants
    text_encoder = CLIPTextModel.from_pretrained(weights / "text_encoder", local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(weights / "tokenizer", local_files_only=True)
    text = encode_captions(text_encoder, tokenizer, captions + [""])
    encoded = time.time()

    torch.manual_seed(args.seed)
    unet = UNet3DConditionModel.from_pretrained(unet_dir, local_files_only=True)
    scheduler = DDIMScheduler.from_pretrained(weights / "scheduler", local_files_only=True)
    losses = pretrain_unet(unet, scheduler, latents, text[:-1], [rows[video] for video in clip_videos], text[-1],
                           args.steps, batch_size=args.batch_size, lr=args.lr,
                           caption_dropout=args.caption_dropout, seed=args.seed)
    loss_curve = curve(losses, CURVE_POINTS)
    record = {"data_root": str(args.data_root), "split": "train", "steps": args.steps, "clips": args.clips,
              "frames": args.frames, "size": args.size, "batch_size": args.batch_size, "lr": args.lr,
              "max_join": args.max_join, "captions": len(captions), "caption_dropout": args.caption_dropout,
              "seed": args.seed, "first_loss": loss_curve[0], "last_loss": loss_curve[-1], "loss_curve": loss_curve,
              "encode_seconds": round(encoded - started, 1), "train_seconds": round(time.time() - encoded, 1),
              "seconds_per_step": round((time.time() - encoded) / max(args.steps, 1), 3),
              "seconds": round(time.time() - started, 1)}
    with atomic_directory(unet_dir, replace=True) as staging:
        unet.save_pretrained(staging)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"UNet pretrained in {record['seconds']:.0f} s ({record['encode_seconds']:.0f} s encoding "
          f"{args.clips} clips and {len(captions)} captions, {record['seconds_per_step']:.2f} s per step): "
          f"denoising loss by tenths of the run " + " ".join(f"{value:.3f}" for value in loss_curve))


if __name__ == "__main__":
    main()
