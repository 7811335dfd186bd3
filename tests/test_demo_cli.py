"""demo.py end to end on the tiny model: mask PNGs, overlay mp4/GIF, sentences.json, clip streaming, clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import demo
from models import build_model
from inference.predictor import Predictor
from tests.cli_help import assert_help_explains_every_flag
from util.checkpoint import build_checkpoint, save_checkpoint
from util.config import load_config
from util.video_io import VideoReadError

REPO = Path(__file__).resolve().parent.parent
SENTENCES = ["the red square moving right", "the blue circle"]
NUM_FRAMES, SIZE = 6, 64


def moving_shapes(num_frames: int = NUM_FRAMES, size: int = SIZE) -> np.ndarray:
    """uint8 [T, H, W, 3]: a red square moving right and a still blue disc on grey; every frame differs."""
    frames = np.full((num_frames, size, size, 3), 96, dtype=np.uint8)
    rows, cols = np.mgrid[:size, :size]
    disc = (rows - 44) ** 2 + (cols - 44) ** 2 < 10 ** 2
    for index, frame in enumerate(frames):
        frame[disc] = (40, 60, 230)
        left = 4 + 6 * index
        frame[8:24, left:left + 16] = (230, 40, 40)
    return frames


def decode_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def checkpoint(tiny_weights, tmp_path_factory) -> Path:
    """A main.py checkpoint of a tiny (untrained) HCD, at 64 pixels so that the runs stay fast."""
    cfg = load_config(REPO / "configs" / "refshapes_tiny.yaml")
    cfg["weights"] = str(tiny_weights)
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = SIZE
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1])
    state = build_checkpoint(model, optimizer, scheduler, None, epoch=1, step=1, data_position=0, rng=[], config=cfg)
    return save_checkpoint(state, tmp_path_factory.mktemp("run"), "checkpoint_epoch001.pth")


@pytest.fixture(scope="module")
def predictor(checkpoint, tiny_weights) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, tiny_weights)


@pytest.fixture(scope="module")
def video_path(tmp_path_factory) -> Path:
    """An mp4 of ``moving_shapes`` written with PyAV (H.264, 5 fps)."""
    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for frame in moving_shapes():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def run(*argv) -> int:
    return demo.main([str(arg) for arg in argv])


def test_video_with_two_sentences(video_path, checkpoint, tiny_weights, predictor, tmp_path):
    out = tmp_path / "out"
    assert run("--video", video_path, "--text", SENTENCES[0], "--text", SENTENCES[1], "--checkpoint", checkpoint,
               "--weights", tiny_weights, "--out", out, "--clip_len", 4, "--overlap", 2) == 0
    assert json.loads((out / "sentences.json").read_text()) == {"0": SENTENCES[0], "1": SENTENCES[1]}
    assert sorted(path.name for path in out.iterdir()) == ["0", "1", "sentences.json"]
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind

    frames = decode_mp4(video_path)
    expected = predictor.segment(frames, SENTENCES, clip_len=4, overlap=2)  # [2, 6, 64, 64]
    names = [f"{index:05d}.png" for index in range(NUM_FRAMES)]
    for k in range(2):
        assert sorted(path.name for path in (out / str(k) / "masks").iterdir()) == names
        for index, name in enumerate(names):
            with Image.open(out / str(k) / "masks" / name) as image:
                assert image.mode == "L" and image.size == (SIZE, SIZE)
                mask = np.asarray(image)
            assert set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(mask == 255, expected[k, index])
        overlay = decode_mp4(out / str(k) / "overlay.mp4")
        assert overlay.shape == (NUM_FRAMES, SIZE, SIZE, 3)
        with av.open(str(out / str(k) / "overlay.mp4")) as container:
            assert container.streams.video[0].average_rate == 5  # the input's frame rate
        with Image.open(out / str(k) / "overlay.gif") as gif:
            assert gif.n_frames == NUM_FRAMES and gif.size == (SIZE, SIZE)
            assert gif.info["duration"] == 200 and gif.info["loop"] == 0
        # The sentence is written on the top band: it changes pixels there, the bottom row is the video's.
        assert np.abs(overlay[0, :4].astype(int) - frames[0, :4]).mean() > 20
    # An earlier demo result in --out is replaced by the new one.
    assert run("--video", video_path, "--text", SENTENCES[1], "--checkpoint", checkpoint, "--weights", tiny_weights,
               "--out", out, "--max_frames", 1) == 0
    assert sorted(path.name for path in out.iterdir()) == ["0", "sentences.json"]
    assert sorted(path.name for path in (out / "0" / "masks").iterdir()) == names[:1]


def test_folder_of_odd_sized_frames(checkpoint, tiny_weights, tmp_path):
    frames = moving_shapes()[:, :63, :61]  # H x W = 63 x 61: the mp4 (yuv420p) drops the odd row and column
    folder = tmp_path / "frames"
    folder.mkdir()
    stems = ["a_000", "a_001", "b_000", "b_001", "c", "d"]  # sorted by name
    for stem, frame, suffix in zip(stems, frames, [".png", ".jpg", ".png", ".PNG", ".jpeg", ".png"]):
        Image.fromarray(frame).save(folder / f"{stem}{suffix}", quality=95)
    (folder / "notes.txt").write_text("not a frame")
    out = tmp_path / "out"
    assert run("--video", folder, "--text", SENTENCES[1], "--checkpoint", checkpoint, "--weights", tiny_weights,
               "--out", out, "--max_frames", 5, "--clip_len", 3, "--overlap", 1, "--fps", 4) == 0
    assert sorted(path.stem for path in (out / "0" / "masks").iterdir()) == stems[:5]
    for stem in stems[:5]:
        with Image.open(out / "0" / "masks" / f"{stem}.png") as image:
            assert image.mode == "L" and image.size == (61, 63)
    assert decode_mp4(out / "0" / "overlay.mp4").shape == (5, 62, 60, 3)
    with Image.open(out / "0" / "overlay.gif") as gif:
        assert gif.size == (61, 63) and gif.n_frames == 5 and gif.info["duration"] == 250


def test_errors_are_clear(video_path, checkpoint, tiny_weights, tmp_path, capsys):
    def error_of(*argv) -> str:
        with pytest.raises((FileNotFoundError, ValueError)) as error:
            run(*argv)
        return str(error.value)

    common = ["--text", "the dog", "--weights", tiny_weights]
    missing = tmp_path / "missing.mp4"
    assert f"video {missing} does not exist" in error_of("--video", missing, "--checkpoint", checkpoint, *common,
                                                         "--out", tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no frames" in error_of("--video", empty, "--checkpoint", checkpoint, *common, "--out", tmp_path / "o")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    assert "cannot be read as a video" in error_of("--video", broken, "--checkpoint", checkpoint, *common,
                                                   "--out", tmp_path / "o")
    absent_checkpoint = tmp_path / "nope.pth"
    assert f"checkpoint {absent_checkpoint} does not exist" in error_of("--video", video_path, "--checkpoint",
                                                                       absent_checkpoint, *common,
                                                                       "--out", tmp_path / "o")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("keep me")
    assert "not a demo result" in error_of("--video", video_path, "--checkpoint", checkpoint, *common, "--out", busy)
    assert (busy / "thesis.tex").read_text() == "keep me"
    assert not (tmp_path / "o").exists()

    with pytest.raises(SystemExit) as exit_info:
        run("--video", video_path, "--text", "the dog", "--text", "  ", "--checkpoint", checkpoint, "--out", tmp_path)
    assert exit_info.value.code == 2 and "--text number 2 is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--video", video_path, "--text", "x", "--checkpoint", checkpoint, "--out", tmp_path, "--overlap", 36)
    assert "0 <= --overlap < --clip_len" in capsys.readouterr().err


def test_a_failure_midway_leaves_no_output(checkpoint, tiny_weights, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(moving_shapes(3)):
        Image.fromarray(frame).save(folder / f"{index}.png")
    Image.new("RGB", (32, 32)).save(folder / "3.png")  # read only once the masks of frames 0 and 1 are written
    out = tmp_path / "out"
    with pytest.raises(VideoReadError, match="frame '3' is 32x32"):
        run("--video", folder, "--text", "x", "--checkpoint", checkpoint, "--weights", tiny_weights, "--out", out,
            "--clip_len", 2, "--overlap", 0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["frames"]


def test_command_line_reports_a_user_error_in_one_line(tmp_path):
    missing = tmp_path / "missing.mp4"
    result = subprocess.run([sys.executable, str(REPO / "demo.py"), "--video", str(missing), "--text", "the dog",
                             "--checkpoint", str(tmp_path / "c.pth"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (f"error: video {missing} does not exist; pass a video file or "
                                                      f"a folder of frames")
    assert "Traceback" not in result.stderr


def test_help_explains_every_flag(capsys):
    parser = demo.build_parser()
    assert_help_explains_every_flag(parser, capsys)
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {"--video", "--text", "--checkpoint", "--weights", "--out", "--device", "--clip_len", "--overlap",
            "--max_frames", "--threshold", "--fps", "--amp", "--config"} <= flags
