"""bench_fps.py: ReferDINO's FPS protocol on a generated RefShapes valid split, JSON on the last line."""
import json

import pytest

from benchmarks import bench_fps, fps_protocol
from datasets import read_meta_expressions
from datasets.refshapes import generate_refshapes

pytestmark = pytest.mark.usefixtures("one_thread")


class StepClock:
    """Stands in for the ``time`` module: ``perf_counter`` advances by ``step`` seconds at each reading."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


def test_fps_counts_every_timed_expression_and_ends_with_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(fps_protocol, "time", StepClock(0.25))  # each timed expression: one step of 0.25 s
    bench_fps.main(["--json", "--videos", "1", "--frames", "3", "--size", "64"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    generate_refshapes(tmp_path, num_videos=1, num_valid_videos=1, num_frames=3, size=64, seed=0)  # the same split
    expressions = sum(len(entry["expressions"]) for entry in read_meta_expressions(tmp_path, "valid").values())
    assert result["expressions"] == expressions - 1  # the first one is the warm-up
    assert result["frames"] == 3 * result["expressions"]
    # The warm-up is not timed, and every timed expression adds exactly its own section: 3 frames per 0.25 s.
    assert result["seconds"] == pytest.approx(0.25 * result["expressions"]) and result["fps"] == pytest.approx(12.0)
    assert list(result)[:3] == ["fps", "frames", "seconds"] and result["model"] == "tiny"


def test_flags_that_cannot_work_are_refused(capsys):
    for argv, message in ((["--amp", "bf16"], "is for --full_size"),
                          (["--full_size", "--checkpoint", "x.pth"], "random full-size weights"),
                          (["--videos", "0"], "at least 1")):
        with pytest.raises(SystemExit):
            bench_fps.parse_args(argv)
        assert message in capsys.readouterr().err
