"""Videos shared between the processes of a ``torchrun`` inference run, and what counts as a finished video.

    torchrun --nproc_per_node 4 inference_ytvos.py --checkpoint ... --output_dir out --device cuda

``assign_videos`` gives each rank its share, balanced by frame count (greedy: the longest video first, each onto
the rank with the fewest frames so far; ties go to the lower rank and the earlier video name), a pure function of
the videos, so every rank computes the same split without talking to the others. Each rank writes its own video
folders, each atomically (``util.atomic_write.write_folder``); ``run_shard`` records a failure instead of raising
so that every rank reaches the final exchange, where the job ends with one error naming the rank and the video
(``ShardError``). Rank 0 alone then checks completeness and writes the zip or the scores.

A video counts as done only when its folder holds exactly the files it should (``missing_videos``): a folder
appears whole or not at all, so an interrupted run leaves no half-written video, and a re-run of the same command
under torchrun predicts only the videos that are not done (a preempted job resumes). A rank killed while writing
leaves only a hidden staging folder ``.<video>.partial-<hex>``, never counted as done, zipped or scored (those read
the video's own folder by name), and removed when its video is redone (``write_folder``: each video has one rank).
``run.json`` beside the outputs of a torchrun job records what produced them (checkpoint, split, flags); a run
whose record differs starts over instead of keeping another model's masks. A single process keeps videos only with
``--skip_existing``, as before, and writes no ``run.json``.
"""
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from util.atomic_write import atomic_write
from util.checkpoint import PRETRAINED_WEIGHTS_FILE
from util.distributed import all_gather_objects, barrier, get_rank, get_world_size

RUN_RECORD = "run.json"


def assign_videos(frame_counts: dict[str, int], world_size: int) -> list[list[str]]:
    """``[videos of rank 0, videos of rank 1, ...]`` (each sorted by name) balanced by frame count: the videos in
    decreasing frame count (then by name) each go to the rank with the fewest frames so far (then the lowest rank).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads, shards = [0] * world_size, [[] for _ in range(world_size)]
    for video in sorted(frame_counts, key=lambda name: (-frame_counts[name], name)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shards[rank].append(video)
        loads[rank] += frame_counts[video]
    return [sorted(shard) for shard in shards]


def frame_counts(videos: dict) -> dict[str, int]:
    """``{video: number of frames}`` of a meta_expressions ``videos`` dict (the cost a video adds to its rank)."""
    return {video: len(entry["frames"]) for video, entry in videos.items()}


def shard(videos: dict, rank: int, world_size: int) -> dict:
    """The entries of ``videos`` that rank ``rank`` of ``world_size`` segments."""
    return {video: videos[video] for video in assign_videos(frame_counts(videos), world_size)[rank]}


def folder_holds(folder: Path, names: Iterable[str]) -> bool:
    """Whether ``folder`` holds exactly the files ``names`` (paths relative to it), nothing missing or extra."""
    if not folder.is_dir():
        return False
    present = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    return present == set(names)


def missing_videos(videos: dict, is_done: Callable[[str, dict], bool]) -> dict:
    """The entries of ``videos`` that ``is_done(video, entry)`` does not count as finished."""
    return {video: entry for video, entry in videos.items() if not is_done(video, entry)}


class ShardError(RuntimeError):
    """A video failed on some rank; the message names the rank, the video and the error."""


def run_shard(videos: dict, process: Callable[[str, dict], None], rank: int,
              progress: bool = False) -> tuple[str | None, Exception | None]:
    """``process(video, entry)`` for each video in order; stops at the first failure and returns
    ``("rank R, video V: <error>", the exception)`` (``(None, None)`` when all went through). The failed video's
    folder is never half written (``process`` writes it atomically), so it is redone on the next run.
    ``progress``: a progress bar."""
    for video, entry in tqdm(videos.items(), desc="videos", unit="video", disable=not progress):
        try:
            process(video, entry)
        except Exception as error:  # every rank hears of it before any raises (raise_failures)
            error.add_note(f"while segmenting video {video} on rank {rank}")
            return f"rank {rank}, video {video}: {type(error).__name__}: {error}", error
    return None, None


def raise_failures(failures: list[str | None], own: Exception | None = None) -> None:
    """After every rank's ``run_shard``: this rank's own exception ``own`` as it was raised (so a single process
    behaves as a plain loop), else ``ShardError`` naming the ranks and videos that failed, if any."""
    if own is not None:
        raise own
    problems = [failure for failure in failures if failure]
    if problems:
        raise ShardError("inference failed on " + "; ".join(problems) + ". The videos finished before are complete "
                         "on disk; run the same command again to redo only the others")


def run_record(**fields) -> dict:
    """What produced an output folder: the given fields, with a checkpoint path replaced by its resolved path,
    size and modification time (a retrained checkpoint at the same path differs)."""
    record = dict(fields)
    checkpoint = record.get("checkpoint")
    if checkpoint is not None:
        path = Path(checkpoint).resolve()
        target = path / PRETRAINED_WEIGHTS_FILE if path.is_dir() else path
        stat = os.stat(target) if target.exists() else None
        record["checkpoint"] = {"path": str(path), "size": stat.st_size if stat else None,
                                "mtime_ns": stat.st_mtime_ns if stat else None}
    return json.loads(json.dumps(record))  # as it reads back from the file


def read_run_record(output_dir: Path) -> dict | None:
    path = Path(output_dir) / RUN_RECORD
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_run_record(output_dir: Path, record: dict) -> None:
    atomic_write(Path(output_dir) / RUN_RECORD, lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))


def vouches_for_outputs(previous: dict | None, record: dict, world_size: int, skip_existing: bool) -> bool:
    """Whether ``run.json`` may hold ``record`` once this run is over, i.e. whether every video folder will then
    come from ``record``: under torchrun when every video is redone or the kept ones came from ``record`` too.
    Never for a single process (it writes no record, and one left by an earlier torchrun job no longer describes
    the folders it rewrites), nor when ``--skip_existing`` keeps folders of another run."""
    return world_size > 1 and (not skip_existing or previous == record)


def sharded_run(videos: dict, process: Callable[[str, dict], None], is_done: Callable[[str, dict], bool],
                output_dir: Path, record: dict, skip_existing: bool, where: Path | None = None) -> bool:
    """Run ``process`` over this rank's share of ``videos`` (``shard``) in a process group that is already set up
    (a single process: all of them). Returns True on rank 0 once every rank's videos are written, False on the
    others; raises ``ShardError`` on every rank when any video failed on any rank.

    Finished videos (``is_done``) are kept with ``skip_existing`` (``--skip_existing``) and, under torchrun, by
    default when ``output_dir/run.json`` shows the same ``record`` (the same command again: a resumed job).
    """
    rank, world_size = get_rank(), get_world_size()
    previous = read_run_record(output_dir)
    resume = skip_existing or (world_size > 1 and previous == record)
    barrier()  # every rank has read the old record before rank 0 replaces it
    if rank == 0:
        if vouches_for_outputs(previous, record, world_size, skip_existing):
            write_run_record(output_dir, record)
        else:  # the outputs will not all come from ``record``: no record may vouch for them
            (Path(output_dir) / RUN_RECORD).unlink(missing_ok=True)
    mine = shard(videos, rank, world_size)
    todo = missing_videos(mine, is_done) if resume else mine
    kept = all_gather_objects(len(mine) - len(todo))
    if rank == 0 and sum(kept):
        reason = "--skip_existing" if skip_existing else "resuming the same run"
        print(f"{reason}: keeping {sum(kept)} video folders already in {where or output_dir} (each complete)",
              file=sys.stderr)
    failure, error = run_shard(todo, process, rank, progress=rank == 0)
    raise_failures(all_gather_objects(failure), error)  # also the barrier: every rank's videos are on disk after it
    return rank == 0
