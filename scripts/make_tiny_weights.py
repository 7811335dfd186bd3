"""Write a tiny, randomly initialised but seeded pretrained set in the layout of ``weight/`` (for tests and the demo).

    python -m scripts.make_tiny_weights --out weight_tiny [--seed 0]
"""
import argparse
from pathlib import Path


from testing.tiny_weights import build_tiny_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (absent or empty); receives unet/, vae/, text_encoder/, tokenizer/, "
                             "scheduler/, clip/ and roberta/")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random weights; the same seed gives identical files (default: 0)")
    args = parser.parse_args()
    build_tiny_weights(args.out, seed=args.seed)
    print(f"Tiny pretrained weights written to {args.out}")


if __name__ == "__main__":
    main()
