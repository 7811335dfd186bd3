"""metrics/tables.py: the tables printed before the JSON lines."""
from metrics.tables import a2d_table, demo_table, result_table, score_table


def test_score_table_counts_expressions_from_either_key():
    scores = {"J": 0.5, "F": 0.25, "JF": 0.375, "by_kind": {"colour": {"J": 1.0, "F": 0.5, "JF": 0.75, "count": 2}}}
    with_list = score_table({**scores, "per_expression": {"a": {}, "b": {}, "c": {}}})
    assert with_list == score_table({**scores, "expressions": 3})
    assert with_list.splitlines() == ["kind     count       J       F     J&F",
                                      "colour       2  1.0000  0.5000  0.7500",
                                      "all          3  0.5000  0.2500  0.3750"]


def test_result_a2d_and_demo_tables():
    assert result_table({"anno_0": {"J": 1.0, "F": 0.5, "JF": 0.75}}).splitlines()[1] == "anno_0   1.0000  0.5000  0.7500"
    results = {key: 0.5 for key in ("mAP", "AP50", "AP75", "overall_iou", "mean_iou", "P@0.5", "P@0.6", "P@0.7",
                                    "P@0.8", "P@0.9", "mAP_top1", "AP50_top1", "AP75_top1")}
    lines = a2d_table({**results, "num_samples": 4, "map_over": "all_queries"}, "jhmdb").splitlines()
    assert lines[0].startswith("JHMDB-Sentences: 4 samples") and len(lines) == 14 and lines[6] == "P@0.5         50.00"
    demo = demo_table({"J": 0.5, "F": 0.5, "JF": 0.5, "by_kind": {"size": {"J": 1.0, "F": 0.0, "JF": 0.5}},
                       "baseline_by_kind": {}, "baseline_JF": 0.25}).splitlines()
    assert demo[1].split()[:4] == ["size", "1.000", "0.000", "0.500"] and demo[1].split()[4] == "nan"
    assert demo[2].split() == ["overall", "0.500", "0.500", "0.500", "0.250"]
