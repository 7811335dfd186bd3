"""Every result table the entry points print before their JSON line: aligned text, one function per layout."""
from metrics.refcoco import PRECISION_THRESHOLDS as REFCOCO_THRESHOLDS

A2D_TITLES = {"a2d": "A2D-Sentences test", "jhmdb": "JHMDB-Sentences"}


def score_table(scores: dict) -> str:
    """The J, F and J&F of every expression kind and of all expressions (Ref-YouTube-VOS layout, MeViS), as
    aligned text. ``scores``: ``{"J", "F", "JF", "by_kind": {kind: {"J", "F", "JF", "count"}}}`` and either
    ``per_expression`` or ``expressions`` (the count)."""
    count = len(scores["per_expression"]) if "per_expression" in scores else scores["expressions"]
    rows = [(kind, values["count"], values) for kind, values in scores["by_kind"].items()]
    rows.append(("all", count, scores))
    width = max(len("kind"), *(len(str(kind)) for kind, _, _ in rows))
    lines = [f"{'kind':<{width}}  {'count':>6}  {'J':>6}  {'F':>6}  {'J&F':>6}"]
    lines += [f"{kind:<{width}}  {count:>6}  {values['J']:6.4f}  {values['F']:6.4f}  {values['JF']:6.4f}"
              for kind, count, values in rows]
    return "\n".join(lines)


def result_table(rows: dict[str, dict]) -> str:
    """J, F and J&F of each named result (Ref-DAVIS17: one row per annotator and their mean), as aligned text."""
    width = max(len("results"), *(len(name) for name in rows))
    lines = [f"{'results':<{width}}  {'J':>6}  {'F':>6}  {'J&F':>6}"]
    lines += [f"{name:<{width}}  {row['J']:6.4f}  {row['F']:6.4f}  {row['JF']:6.4f}" for name, row in rows.items()]
    return "\n".join(lines)


def a2d_table(results: dict, name: str) -> str:
    """The A2D / JHMDB-Sentences metrics in percent, one a line, under a title saying what they are over."""
    keys = (["mAP", "AP50", "AP75", "overall_iou", "mean_iou"] + [key for key in results if key.startswith("P@")]
            + ["mAP_top1", "AP50_top1", "AP75_top1"])  # P@0.5 ... P@0.9 in metrics.a2d's order
    lines = [f"{A2D_TITLES[name]}: {results['num_samples']} samples, annotated frame of each window; mAP over the "
             "predictions of all query slots (MTTR/ReferFormer convention), *_top1 over the top-scoring slot only"]
    lines += [f"{key:<12} {100 * results[key]:6.2f}" for key in keys]
    return "\n".join(lines)


def demo_table(metrics: dict) -> str:
    """``make demo``'s table: J, F, J&F per expression kind and overall, beside the random-object baseline's J&F."""
    lines = [f"{'':<12}{'J':>7}{'F':>7}{'J&F':>7}{'random':>8}"]
    for kind, value in sorted(metrics["by_kind"].items()):
        lines.append(f"{kind:<12}{value['J']:>7.3f}{value['F']:>7.3f}{value['JF']:>7.3f}"
                     f"{metrics['baseline_by_kind'].get(kind, float('nan')):>8.3f}")
    lines.append(f"{'overall':<12}{metrics['J']:>7.3f}{metrics['F']:>7.3f}{metrics['JF']:>7.3f}"
                 f"{metrics['baseline_JF']:>8.3f}")
    return "\n".join(lines)


def refcoco_table(results: dict) -> str:
    """oIoU, mIoU and P@0.5..0.9 of each RefCOCO-family val set (``metrics.refcoco``), in percent."""
    lines = ["RefCOCO-family val, top query per sample: oIoU = sum of intersections / sum of unions, mIoU = mean "
             "per-sample IoU"]
    lines.append(f"{'set':<10} {'samples':>8} {'oIoU':>7} {'mIoU':>7} " + " ".join(f"{'P@' + str(x):>6}"
                                                                             for x in REFCOCO_THRESHOLDS))
    for name, scores in results.items():
        lines.append(f"{name:<10} {scores['samples']:>8} {100 * scores['oIoU']:7.2f} {100 * scores['mIoU']:7.2f} "
                     + " ".join(f"{100 * scores[f'P@{x}']:6.1f}" for x in REFCOCO_THRESHOLDS))
    return "\n".join(lines)
