"""inference/sharding.py: the balanced, deterministic split of the videos over torchrun ranks, completeness, and
2-process gloo inference on CPU that equals the 1-process output byte for byte and resumes after a failed rank."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference.sharding import assign_videos, folder_holds, raise_failures, run_record, run_shard, ShardError

REPO = Path(__file__).resolve().parents[2]


def test_longest_first_onto_the_least_loaded_rank():
    counts = {"a": 10, "b": 7, "c": 6, "d": 5, "e": 2, "f": 2}
    # a -> 0 (10); b -> 1 (7); c -> 1 (13); d -> 0 (15); e -> 1 (15); f -> 0 (tie 15/15: the lower rank)
    assert assign_videos(counts, 2) == [["a", "d", "f"], ["b", "c", "e"]]
    assert assign_videos(counts, 1) == [sorted(counts)]
    assert assign_videos({"x": 3}, 3) == [["x"], [], []]


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_every_video_once_and_loads_within_the_longest_video(world_size):
    rng = __import__("random").Random(world_size)
    counts = {f"v{index:03d}": rng.randint(1, 200) for index in range(57)}
    shards = assign_videos(counts, world_size)
    assert sorted(video for shard in shards for video in shard) == sorted(counts)
    loads = [sum(counts[video] for video in shard) for shard in shards]
    assert max(loads) - min(loads) <= max(counts.values())  # greedy LPT bound
    assert assign_videos(dict(reversed(list(counts.items()))), world_size) == shards  # order of the dict: no effect


def test_folder_holds_exactly_the_expected_files(tmp_path):
    (tmp_path / "v" / "0").mkdir(parents=True)
    (tmp_path / "v" / "0" / "00000.png").write_bytes(b"x")
    assert folder_holds(tmp_path / "v", ["0/00000.png"])
    assert not folder_holds(tmp_path / "v", ["0/00000.png", "0/00001.png"])  # one missing
    assert not folder_holds(tmp_path / "v", [])  # one extra
    assert not folder_holds(tmp_path / "absent", [])


def test_a_failure_stops_the_shard_and_names_the_video(tmp_path):
    done = []

    def process(video, entry):
        if video == "b":
            raise ValueError("frame 3 is corrupt")
        done.append(video)

    message, error = run_shard({"a": {}, "b": {}, "c": {}}, process, rank=1)
    assert done == ["a"] and message == "rank 1, video b: ValueError: frame 3 is corrupt"
    with pytest.raises(ValueError, match="frame 3"):  # the failing rank raises its own error
        raise_failures([None, message], error)
    with pytest.raises(ShardError, match="rank 1, video b"):  # the others say which rank and video failed
        raise_failures([None, message])
    raise_failures([None, None])


def test_run_record_changes_with_the_checkpoint_file(tmp_path):
    checkpoint = tmp_path / "last.pth"
    checkpoint.write_bytes(b"one")
    first = run_record(checkpoint=str(checkpoint), split="valid")
    assert run_record(checkpoint=str(checkpoint), split="valid") == first
    checkpoint.write_bytes(b"retrained")
    assert run_record(checkpoint=str(checkpoint), split="valid") != first


# ------------------------------------------------------------------------------------ two gloo processes


def launch(entry: str, args: list[str], nproc: int) -> subprocess.CompletedProcess:
    """``entry`` in one plain process or under torchrun with ``nproc`` gloo processes, one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", str(nproc)]
    return subprocess.run(prefix + [entry, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and path.name not in ("run.json", "config.yaml")}


def test_two_processes_write_the_same_bytes_and_resume_after_a_failed_rank(tiny_model_dir, refshapes_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(refshapes_root, data)
    common = ["--checkpoint", str(tiny_model_dir), "--data_root", str(data), "--device", "cpu"]
    single = launch("inference_ytvos.py", common + ["--output_dir", str(tmp_path / "one")], 1)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = tree_bytes(tmp_path / "one")
    assert "submission.zip" in reference and len(reference) > 10

    # Rank 1's first video (in the balanced split) has a broken later frame: the job fails naming it.
    videos = sorted(path.name for path in (data / "valid" / "JPEGImages").iterdir())
    counts = {video: len(list((data / "valid" / "JPEGImages" / video).iterdir())) for video in videos}
    victim = assign_videos(counts, 2)[1][0]
    frame = sorted((data / "valid" / "JPEGImages" / victim).iterdir())[-1]
    good = frame.read_bytes()
    frame.write_bytes(b"not a jpeg")
    sharded = ["--output_dir", str(tmp_path / "two")]
    failed = launch("inference_ytvos.py", common + sharded, 2)
    assert failed.returncode != 0 and f"video {victim}" in failed.stderr
    written = tree_bytes(tmp_path / "two")
    assert "submission.zip" not in written
    assert not (tmp_path / "two" / "Annotations" / victim).exists()  # nothing half-written
    assert all(reference[name] == data_ for name, data_ in written.items())  # what is there is final
    assert not [p for p in (tmp_path / "two" / "Annotations").iterdir() if p.name.startswith(".")]

    frame.write_bytes(good)
    resumed = launch("inference_ytvos.py", common + sharded, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    kept = len({name.split("/")[1] for name in written})
    assert f"resuming the same run: keeping {kept} video folders" in resumed.stderr and kept > 0
    assert tree_bytes(tmp_path / "two") == reference  # every PNG and the zip, byte for byte
