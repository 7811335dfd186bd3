"""Pretrain the VAE of a tiny weights folder on a dataset's training frames (see models/vae_pretraining.py).

    python scripts/pretrain_tiny_vae.py --weights weight_tiny --data_root data/refshapes --steps 300

The VAE in ``<weights>/vae`` is replaced atomically; ``<weights>/vae/pretraining.json`` records what was done,
and a folder that already has it is left alone.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from PIL import Image  # noqa: E402

from models.vae_pretraining import pretrain_vae  # noqa: E402
from util.atomic_write import atomic_directory  # noqa: E402

RECORD = "pretraining.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="tiny weights folder (from scripts/make_tiny_weights.py)")
    parser.add_argument("--data_root", required=True, help="dataset in the Ref-YouTube-VOS layout; its "
                                                           "train/JPEGImages frames are the training images")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (batches of 8 crops of 64x64)")
    parser.add_argument("--images", type=int, default=400, help="number of frames sampled to train on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame sample, crops and posterior noise")
    args = parser.parse_args()
    vae_dir = Path(args.weights) / "vae"
    if (vae_dir / RECORD).is_file():
        print(f"{vae_dir} is already pretrained ({vae_dir / RECORD}); nothing to do")
        return
    frames = sorted((Path(args.data_root) / "train" / "JPEGImages").glob("*/*.jpg"))
    if not frames:
        sys.exit(f"no frames under {Path(args.data_root) / 'train' / 'JPEGImages'}: generate the dataset first")
    chosen = random.Random(args.seed).sample(frames, min(args.images, len(frames)))
    images = [np.array(Image.open(path).convert("RGB")) for path in chosen]
    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
    started = time.time()
    losses = pretrain_vae(vae, images, args.steps, seed=args.seed)
    record = {"data_root": str(args.data_root), "steps": args.steps, "images": len(images), "seed": args.seed,
              "first_loss": losses[0], "last_loss": sum(losses[-20:]) / len(losses[-20:])}
    with atomic_directory(vae_dir, replace=True) as staging:
        vae.save_pretrained(staging)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"VAE pretrained in {time.time() - started:.0f} s: reconstruction loss {record['first_loss']:.3f} -> "
          f"{record['last_loss']:.3f}")


if __name__ == "__main__":
    main()
