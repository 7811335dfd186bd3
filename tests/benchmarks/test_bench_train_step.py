"""bench_train_step.py --dry_run: figures for every batch size, clips/s from the measured step time, and a step whose
operator count hardly grows with the batch (no per-clip loops)."""
import json
import statistics

import pytest

from benchmarks import bench_train_step

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dry_run_reports_each_batch_size_from_its_measured_steps(capsys, tiny_weights):
    bench_train_step.main(["--dry_run", "--json", "--device", "cpu", "--weights", str(tiny_weights)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = summary["batch_sizes"]
    assert summary["device"] == "cpu" and summary["dry_run"] and list(rows) == ["2", "3"]
    for batch, row in rows.items():
        assert len(row["steps_s"]) == 2 and row["step_s"] == statistics.median(row["steps_s"]) > 0
        assert row["clips_per_s"] == pytest.approx(int(batch) / row["step_s"])
        assert row["step_vs_first"] == pytest.approx(row["step_s"] / rows["2"]["step_s"])
        assert 0 < row["overhead_share"] < 1 and row["op_calls"] > 1000
    # One more clip adds a few host-side calls (moving its target, tokenising its caption); the per-clip matcher and
    # criterion loops of before added about 1300 operator calls per clip.
    assert 0 <= rows["3"]["op_calls"] - rows["2"]["op_calls"] < 100


def test_flags_that_cannot_work_are_refused(capsys):
    for argv, message in ((["--size", "100"], "multiple of 32"), (["--batch_sizes", "0"], "at least 1")):
        with pytest.raises(SystemExit):
            bench_train_step.parse_args(argv)
        assert message in capsys.readouterr().err
