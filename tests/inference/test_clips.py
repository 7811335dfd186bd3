"""inference/clips.py: the clip rule shared by Predictor.stream and the scripts' flags, and the clip that hands
each frame back (app.py's progress)."""
import numpy as np
import pytest
from PIL import Image

from inference.cli import clip_flags_problem
from inference.clips import check_clip, clip_problem, clip_windows, handing_clip
from inference.predictor import Predictor


def test_clip_problem_names_the_flags_and_accepts_what_stream_accepts():
    assert clip_problem(None) is None and clip_problem(3, 2) is None and clip_problem(1, 0) is None
    assert "0 <= --overlap < --clip_len" in clip_flags_problem(4, 4)
    assert "--overlap needs --clip_len" in clip_flags_problem(None, 1)
    for bad in ((0, 0), (3, 3), (3, -1), (None, 2)):
        assert clip_problem(*bad) is not None
        with pytest.raises(ValueError):
            check_clip(*bad)


class CountingPredictor(Predictor):
    """Predictor.stream's loop with a clip pass that only counts itself."""

    def __init__(self):  # no model: only the streaming logic runs
        self.passes = 0

    def _clip_probabilities(self, frames, sentences):
        self.passes += 1
        return np.zeros((len(sentences), len(frames), 1, 1), np.float32)


def handed_back(num_frames: int, clip_len: int, overlap: int) -> list[int]:
    """How many clip passes Predictor.stream had run when it handed back each frame."""
    predictor = CountingPredictor()
    frames = ((index, Image.new("RGB", (1, 1))) for index in range(num_frames))
    return [predictor.passes for _ in predictor.stream(frames, ["x"], clip_len, overlap)]


@pytest.mark.parametrize("num_frames,clip_len,overlap", [(6, 4, 2), (7, 3, 2), (5, 5, 1), (2, 4, 1), (9, 3, 0),
                                                         (10, 4, 1)])
def test_handing_clip_counts_the_clips_of_clip_windows(num_frames, clip_len, overlap):
    expected = handed_back(num_frames, clip_len, overlap)
    got = [handing_clip(index, num_frames, clip_len, overlap) for index in range(num_frames)]
    assert [clip for clip, _ in got] == expected
    assert {count for _, count in got} == {len(clip_windows(num_frames, clip_len, overlap))} == {expected[-1]}
