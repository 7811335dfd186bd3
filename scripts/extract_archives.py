"""Extract downloaded dataset archives (DAVIS-2017, Ref-DAVIS17 expressions, A2D/JHMDB-Sentences, Ref-YouTube-VOS)
safely: members with absolute paths, '..' components, links leading outside, hard links or device files make the
whole archive refused, and a failed extraction leaves the destination as it was (``util/archive.py``).

Usage (from the repository root): python -m scripts.extract_archives DAVIS-2017-trainval-480p.zip --out data/davis
"""
import argparse


from util.archive import safe_extract
from util.cli import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archives", nargs="+", metavar="ARCHIVE",
                        help=".zip, .tar, .tar.gz/.tgz, .tar.bz2 or .tar.xz files, extracted in the order given")
    parser.add_argument("--out", required=True, help="destination folder (created if needed); existing entries "
                                                     "are never overwritten")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for archive in args.archives:
        added = safe_extract(archive, args.out)
        print(f"{archive}: extracted {', '.join(path.name for path in added) or 'nothing'} into {args.out}")
    return 0


if __name__ == "__main__":
    exit_on_user_error(main)
