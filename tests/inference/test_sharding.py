"""inference/sharding.py: the balanced, deterministic split of the videos over torchrun ranks, completeness, and
2-process gloo inference on CPU that equals the 1-process output byte for byte (Ref-YouTube-VOS and MeViS) and
resumes after a failed rank and after a rank killed by SIGKILL."""
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from datasets.refshapes import generate_refshapes
from inference.sharding import (RUN_RECORD, ShardError, assign_videos, folder_holds, raise_failures, run_record,
                                run_shard, sharded_run, vouches_for_outputs, write_run_record)

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


def test_a_record_vouches_only_for_folders_that_all_come_from_it():
    a, b = {"checkpoint": "a"}, {"checkpoint": "b"}
    assert vouches_for_outputs(None, a, world_size=2, skip_existing=False)  # everything redone under torchrun
    assert vouches_for_outputs(b, a, world_size=2, skip_existing=False)  # another run's record: redone too
    assert vouches_for_outputs(a, a, world_size=2, skip_existing=True)  # kept folders came from the same run
    assert not vouches_for_outputs(b, a, world_size=2, skip_existing=True)  # kept folders of another run
    assert not vouches_for_outputs(a, a, world_size=1, skip_existing=False)  # a single process keeps no record


def test_a_single_process_removes_a_torchrun_record_it_no_longer_matches(tmp_path):
    """torchrun with model A, then one process with model B into the same folder, then torchrun A again: the last
    run must not keep B's masks as A's, so the single process removes A's record."""
    write_run_record(tmp_path, {"checkpoint": "a"})
    written = []
    assert sharded_run({"v1": {"frames": ["0"]}}, lambda video, entry: written.append(video), lambda *_: True,
                       tmp_path, {"checkpoint": "b"}, skip_existing=False)
    assert written == ["v1"] and not (tmp_path / RUN_RECORD).exists()


def test_run_record_changes_with_the_checkpoint_file(tmp_path):
    checkpoint = tmp_path / "last.pth"
    checkpoint.write_bytes(b"one")
    first = run_record(checkpoint=str(checkpoint), split="valid")
    assert run_record(checkpoint=str(checkpoint), split="valid") == first
    checkpoint.write_bytes(b"retrained")
    assert run_record(checkpoint=str(checkpoint), split="valid") != first


# ------------------------------------------------------------------------------------ two gloo processes


def command(entry: str, args: list[str], nproc: int) -> list[str]:
    """``entry`` in one plain process or under torchrun with ``nproc`` gloo processes."""
    prefix = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", str(nproc)]
    return prefix + [entry, *args]


def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(entry: str, args: list[str], nproc: int) -> subprocess.CompletedProcess:
    """``command`` run to its end, one thread per process."""
    return subprocess.run(command(entry, args, nproc), cwd=REPO, env=one_thread_env(), capture_output=True,
                          text=True, timeout=300)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and path.name not in ("run.json", "config.yaml")}


@pytest.fixture(scope="module")
def ytvos_reference(tiny_model_dir, refshapes_root, tmp_path_factory) -> dict[str, bytes]:
    """The files of one plain process's Ref-YouTube-VOS run on ``refshapes_root`` (Annotations/ and the zip)."""
    out = tmp_path_factory.mktemp("one")
    single = launch("inference_ytvos.py", ["--checkpoint", str(tiny_model_dir), "--data_root", str(refshapes_root),
                                           "--device", "cpu", "--output_dir", str(out)], 1)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = tree_bytes(out)
    assert "submission.zip" in reference and len(reference) > 10
    return reference


def test_two_processes_write_the_same_bytes_and_resume_after_a_failed_rank(tiny_model_dir, refshapes_root,
                                                                           ytvos_reference, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(refshapes_root, data)
    common = ["--checkpoint", str(tiny_model_dir), "--data_root", str(data), "--device", "cpu"]
    reference = ytvos_reference

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


@contextlib.contextmanager
def opening_waits(path: Path):
    """While in the block, another process's open(``path``) waits (a write lease, fcntl F_SETLEASE: the kernel
    holds the opener until the lease goes, or /proc/sys/fs/lease-break-time seconds later); yields a function that
    says whether someone is waiting. ``path`` itself stays a plain, unchanged file."""
    break_time = Path("/proc/sys/fs/lease-break-time")
    if break_time.is_file() and int(break_time.read_text()) < 30:
        pytest.fail(f"{break_time} is under 30 s: the held open() may go on before the test kills it; the kill "
                    f"test needs the kernel's default (45 s) or more")
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)  # the kernel signals the holder when an open waits
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as error:
            pytest.fail(f"no file leases on {path.parent} ({error}): the kill test needs a Linux filesystem "
                        f"with leases for its temporary folder")
        yield lambda: fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK  # being broken: an open() waits
    finally:
        os.close(fd)  # the lease goes with it
        signal.signal(signal.SIGIO, previous)


def worker_pid(agent: int, rank: int) -> int | None:
    """The pid of torchrun ``agent``'s worker process of ``rank`` (its child whose environment says RANK=rank)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            if f"RANK={rank}".encode() in (stat.parent / "environ").read_bytes().split(b"\0"):
                return int(stat.parent.name)
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return None


def wait_for(condition: Callable[[], bool], job: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert job.poll() is None, f"the job ended first (exit code {job.returncode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@dataclass(frozen=True)
class TwoRankJob:
    """inference_ytvos.py over two ranks on a copy of RefShapes valid: the rank-0 videos (``first``), the first video
    of rank 1 (``victim``) and the command's flags."""
    out: Path
    frames: Path
    first: list[str]
    victim: str
    args: list[str]

    @property
    def annotations(self) -> Path:
        return self.out / "Annotations"

    @classmethod
    def prepare(cls, tiny_model_dir: Path, refshapes_root: Path, tmp_path: Path) -> "TwoRankJob":
        data, out = tmp_path / "data", tmp_path / "two"
        shutil.copytree(refshapes_root, data)
        frames = data / "valid" / "JPEGImages"
        counts = {video.name: len(list(video.iterdir())) for video in frames.iterdir()}
        first, (victim, *_) = assign_videos(counts, 2)
        return cls(out, frames, first, victim, ["--checkpoint", str(tiny_model_dir), "--data_root", str(data),
                                                "--device", "cpu", "--output_dir", str(out)])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file leases and /proc")
def test_a_rank_killed_by_sigkill_mid_job_is_resumed_by_the_same_command(tiny_model_dir, refshapes_root,
                                                                         ytvos_reference, tmp_path):
    """Rank 1 is SIGKILLed while it segments its video (held opening a frame, see ``opening_waits``), once rank
    0's videos are written and it waits for rank 1; torchrun fails. A staging folder like the one SIGKILL leaves
    in the middle of writing that video (its cleanup never runs) is put beside it. The same command again keeps
    rank 0's videos, removes the leftover, redoes the rest: every PNG and the zip equal one process's."""
    run = TwoRankJob.prepare(tiny_model_dir, refshapes_root, tmp_path)
    out, annotations, frames, first, victim = run.out, run.annotations, run.frames, run.first, run.victim
    args = run.args
    # not the first frame: every rank reads each video's first frame before segmenting
    with opening_waits(sorted((frames / victim).iterdir())[-1]) as rank_1_waits:
        job = subprocess.Popen(command("inference_ytvos.py", args, 2), cwd=REPO, env=one_thread_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: rank_1_waits() and all((annotations / video).is_dir() for video in first), job)
            rank_1 = worker_pid(job.pid, 1)
            assert rank_1 is not None
            os.kill(rank_1, signal.SIGKILL)
            log, _ = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    assert job.returncode != 0 and "SIGKILL" in log, log[-3000:]  # torchrun names the killed rank's signal
    written = tree_bytes(out)
    assert {name.split("/")[1] for name in written if name.startswith("Annotations/")} == set(first)
    assert "submission.zip" not in written and all(ytvos_reference[name] == data_ for name, data_ in written.items())

    stale = annotations / f".{victim}.partial-0123abcd"  # what SIGKILL while writing the folder leaves
    for name in (name for name in ytvos_reference if name.startswith(f"Annotations/{victim}/")):
        (stale / name.split("/", 2)[2]).parent.mkdir(parents=True, exist_ok=True)
        (stale / name.split("/", 2)[2]).write_bytes(b"half")
    resumed = launch("inference_ytvos.py", args, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming the same run: keeping {len(first)} video folders" in resumed.stderr
    assert tree_bytes(out) == ytvos_reference  # every PNG and the zip, byte for byte; the leftover gone


@pytest.mark.slow  # two torchrun jobs, 25 s; the SIGKILL test above resumes in the default suite. .ci/run: -m slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file leases and /proc")
def test_sigterm_to_every_process_of_the_job_leaves_no_staging_folder_and_the_same_command_resumes(
        tiny_model_dir, refshapes_root, ytvos_reference, tmp_path):
    """A preemption as Slurm sends it: SIGTERM to torchrun (which forwards it to each rank) and to each rank's
    process group, while rank 1 segments its video (held opening a frame, see ``opening_waits``) and rank 0 waits
    for it. Every process stops; the video in progress leaves no staging folder (its cleanup runs), rank 0's
    videos are complete, there is no zip; the same command keeps rank 0's videos and ends equal to one process."""
    run = TwoRankJob.prepare(tiny_model_dir, refshapes_root, tmp_path)
    out, annotations, frames, first, victim = run.out, run.annotations, run.frames, run.first, run.victim
    args = run.args
    with opening_waits(sorted((frames / victim).iterdir())[-1]) as rank_1_waits:
        job = subprocess.Popen(command("inference_ytvos.py", args, 2), cwd=REPO, env=one_thread_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            wait_for(lambda: rank_1_waits() and all((annotations / video).is_dir() for video in first), job)
            ranks = [worker_pid(job.pid, rank) for rank in (0, 1)]
            assert None not in ranks
            for group in (job.pid, *ranks):  # torchrun gives each rank a process group of its own
                os.killpg(group, signal.SIGTERM)
            log, _ = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    assert job.returncode != 0 and "received SIGTERM: stopping now" in log, log[-3000:]
    assert sorted(path.name for path in annotations.iterdir()) == sorted(first)  # no hidden staging folder
    written = tree_bytes(out)
    assert "submission.zip" not in written and all(ytvos_reference[name] == data_ for name, data_ in written.items())

    resumed = launch("inference_ytvos.py", args, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming the same run: keeping {len(first)} video folders" in resumed.stderr
    assert tree_bytes(out) == ytvos_reference


@pytest.mark.slow  # a second entry point through the same sharded_run: 30 s, run by .ci/run (-m slow)
def test_two_processes_write_the_same_mevis_bytes(tiny_model_dir, tmp_path):
    """inference_mevis.py --split valid (video folders and the zip) under torchrun equals one process."""
    data = tmp_path / "mevis"
    generate_refshapes(data, num_videos=1, num_valid_videos=3, num_frames=6, size=64, seed=0, layout="mevis")
    common = ["--checkpoint", str(tiny_model_dir), "--data_root", str(data), "--split", "valid", "--device", "cpu"]
    single = launch("inference_mevis.py", common + ["--output_dir", str(tmp_path / "one")], 1)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = tree_bytes(tmp_path / "one")
    assert "submission.zip" in reference and len(reference) > 10
    sharded = launch("inference_mevis.py", common + ["--output_dir", str(tmp_path / "two")], 2)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert tree_bytes(tmp_path / "two") == reference
