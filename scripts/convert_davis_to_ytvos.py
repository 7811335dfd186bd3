"""Convert Ref-DAVIS17 (DAVIS-2017 unsupervised 480p + davis_text_annotations) to the Ref-YouTube-VOS layout.

Example, with the zips of the MPI site unpacked under data/ref-davis::

    python -m scripts.convert_davis_to_ytvos --davis_root data/ref-davis/DAVIS \\
        --text_root data/ref-davis/davis_text_annotations --out data/ref-davis-ytvos

The sources are copied, never moved; the output folder appears only once the conversion is complete.
"""
import argparse
from pathlib import Path


from datasets.davis import convert_davis_to_ytvos


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--davis_root", required=True, type=Path,
        help="DAVIS-2017 folder holding ImageSets/2017, JPEGImages/480p and Annotations_unsupervised/480p",
    )
    parser.add_argument(
        "--text_root", required=True, type=Path,
        help="folder holding Davis17_annot{1,2}.txt and Davis17_annot{1,2}_full_video.txt",
    )
    parser.add_argument(
        "--out", required=True, type=Path,
        help="new output folder (must not exist) for train/, valid/ and meta_expressions/; use it as data_root",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = convert_davis_to_ytvos(args.davis_root, args.text_root, args.out)
    print(f"wrote Ref-DAVIS17 in the Ref-YouTube-VOS layout to {out}")


if __name__ == "__main__":
    main()
