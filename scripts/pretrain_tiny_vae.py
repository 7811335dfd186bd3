"""Pretrain the VAE of a tiny weights folder on a dataset's training frames (see testing/vae_pretraining.py).

    python -m scripts.pretrain_tiny_vae --weights weight_tiny --data_root data/refshapes --steps 300

A few training videos are held out; the reconstruction PSNR on their frames is printed and recorded. The
``scaling_factor`` is set so that the scaled latents have unit variance, as Stable Diffusion's is.

The VAE in ``<weights>/vae`` is replaced atomically; ``<weights>/vae/pretraining.json`` records what was done,
and a folder that already has it is left alone.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path


import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from testing.vae_pretraining import pretrain_vae, reconstruction_psnr, unit_variance_scaling_factor
from util.atomic_write import atomic_directory

RECORD = "pretraining.json"
SCALE_IMAGES = 64  # training frames whose latents set the scaling factor


def read_images(paths: list[Path]) -> list[np.ndarray]:
    return [np.array(Image.open(path).convert("RGB")) for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="tiny weights folder (from scripts/make_tiny_weights.py)")
    parser.add_argument("--data_root", required=True, help="dataset in the Ref-YouTube-VOS layout; its "
                                                           "train/JPEGImages frames are the training images")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (batches of 8 crops of 64x64)")
    parser.add_argument("--images", type=int, default=400, help="number of frames sampled to train on")
    parser.add_argument("--held_out", type=int, default=8, help="training videos left out of the frame sample; "
                                                               "the PSNR is measured on their frames")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out videos, frame sample, crops and "
                                                            "posterior noise")
    args = parser.parse_args()
    vae_dir = Path(args.weights) / "vae"
    if (vae_dir / RECORD).is_file():
        print(f"{vae_dir} is already pretrained ({vae_dir / RECORD}); nothing to do")
        return
    image_root = Path(args.data_root) / "train" / "JPEGImages"
    videos = sorted(path for path in image_root.iterdir() if path.is_dir()) if image_root.is_dir() else []
    if len(videos) <= args.held_out:
        sys.exit(f"{image_root} has {len(videos)} video folders, need more than --held_out {args.held_out}: "
                 f"generate the dataset first")
    rng = random.Random(args.seed)
    held_out = set(rng.sample(videos, args.held_out))
    frames = sorted(path for video in videos if video not in held_out for path in video.glob("*.jpg"))
    images = read_images(rng.sample(frames, min(args.images, len(frames))))
    held_out_images = read_images(sorted(path for video in held_out for path in video.glob("*.jpg")))
    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
    started = time.time()
    losses = pretrain_vae(vae, images, args.steps, seed=args.seed)
    vae.register_to_config(scaling_factor=unit_variance_scaling_factor(vae, images[:SCALE_IMAGES]))
    record = {"data_root": str(args.data_root), "steps": args.steps, "images": len(images), "seed": args.seed,
              "first_loss": losses[0], "last_loss": sum(losses[-20:]) / len(losses[-20:]),
              "held_out_videos": args.held_out, "held_out_frames": len(held_out_images),
              "psnr_db": round(reconstruction_psnr(vae, held_out_images), 2),
              "scaling_factor": vae.config.scaling_factor, "seconds": round(time.time() - started, 1)}
    with atomic_directory(vae_dir, replace=True) as staging:
        vae.save_pretrained(staging)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"VAE pretrained in {record['seconds']:.0f} s: reconstruction loss {record['first_loss']:.3f} -> "
          f"{record['last_loss']:.3f}, PSNR {record['psnr_db']:.1f} dB on the {len(held_out_images)} frames of "
          f"{args.held_out} held-out videos, scaling factor {record['scaling_factor']:.3f}")


if __name__ == "__main__":
    main()
