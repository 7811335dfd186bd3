"""Plot learning curves (``benchmarks/learning_curve.py``'s curve.json files) and print them as a Markdown table.

Three panels against the (clip, sentence) samples seen, one line per recipe: the valid J of the slot the model
selects (solid) and of its best slot (dotted); J&F overall, with each recipe's random-object baseline (dashed); and
the smallest margin over the kinds of expression, min over kinds of (J&F of the kind - its random-object J&F), with
the demo's target margin of 0.15 (dashed).

    python -m benchmarks.plot_learning_curves runs/curves/*/curve.json --out docs/learning_curves.png
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)

TARGET_MARGIN = 0.15  # every kind's J&F >= its random-object baseline + 0.15 (issue 20)
TARGET_JF = 0.55


def kind_margins(point: dict, baseline: dict) -> dict[str, float]:
    """{kind: J&F of the kind - the random object's J&F of that kind} of one curve point."""
    return {kind: value["JF"] - baseline["by_kind"][kind] for kind, value in point["by_kind"].items()}


def plot(curves: list[dict], out: Path) -> None:
    """Write the three panels (module docstring) for ``curves`` to ``out`` (PNG)."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for index, curve in enumerate(curves):
        colour = f"C{index}"
        samples = [point["samples"] for point in curve["points"]]
        axes[0].plot(samples, [p["selected_J"] for p in curve["points"]], "-o", color=colour, label=curve["name"])
        axes[0].plot(samples, [p["best_slot_J"] for p in curve["points"]], ":", color=colour)
        axes[1].plot(samples, [p["JF"] for p in curve["points"]], "-o", color=colour, label=curve["name"])
        axes[1].axhline(curve["baseline"]["JF"], color=colour, linestyle="--", linewidth=0.8)
        margins = [min(kind_margins(p, curve["baseline"]).values()) for p in curve["points"]]
        axes[2].plot(samples, margins, "-o", color=colour, label=curve["name"])
    axes[1].axhline(TARGET_JF, color="black", linestyle="--", linewidth=0.8)
    axes[2].axhline(TARGET_MARGIN, color="black", linestyle="--", linewidth=0.8)
    titles = ("valid J: selected slot (solid), best slot (dotted)",
              f"valid J&F (dashed: random object; black: target {TARGET_JF})",
              f"min over kinds of J&F - random object (target {TARGET_MARGIN})")
    for axis, title in zip(axes, titles):
        axis.set_xscale("log")
        axis.set_xlabel("(clip, sentence) samples seen")
        axis.set_title(title, fontsize=9)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def table(curves: list[dict]) -> str:
    """A Markdown table: one row per recipe and point, J&F by kind with the random object's in parentheses."""
    kinds = sorted({kind for curve in curves for point in curve["points"] for kind in point["by_kind"]})
    header = ["recipe", "samples", "steps", "s/step", "selected J", "best-slot J", "J&F (random)", *kinds]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for curve in curves:
        baseline = curve["baseline"]
        for point in curve["points"]:
            step = "-" if point["step_seconds"] is None else f"{point['step_seconds']:.2f}"
            by_kind = [f"{point['by_kind'][k]['JF']:.3f} ({baseline['by_kind'][k]:.3f})" if k in point["by_kind"]
                       else "-" for k in kinds]
            lines.append("| " + " | ".join([curve["name"], str(point["samples"]), str(point["steps"]), step,
                                            f"{point['selected_J']:.3f}", f"{point['best_slot_J']:.3f}",
                                            f"{point['JF']:.3f} ({baseline['JF']:.3f})", *by_kind]) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("curves", type=Path, nargs="+", help="curve.json files of benchmarks/learning_curve.py")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    curves = [json.loads(path.read_text()) for path in args.curves]
    plot(curves, args.out)
    print(table(curves))


if __name__ == "__main__":
    main()
