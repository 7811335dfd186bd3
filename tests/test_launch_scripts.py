"""scripts/dist_*.sh: valid bash; DRY_RUN=1 prints the right command and the resolved config; env overrides apply;
the paper's hyper-parameters in configs/davis_hcd.yaml and configs/a2d_hcd.yaml."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from util.checkpoint import CHECKPOINT_KEYS
from util.config import load_config

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
# script -> (config, default GPUs = the paper's, default data root)
TRAIN = {
    "dist_train_ytvos_hcd.sh": ("configs/ytvos_hcd.yaml", 8, "data/ref-youtube-vos"),
    "dist_train_davis_hcd.sh": ("configs/davis_hcd.yaml", 1, "data/ref-davis"),
    "dist_train_a2d_hcd.sh": ("configs/a2d_hcd.yaml", 4, "data/a2d_sentences"),
    "dist_train_mevis_hcd.sh": ("configs/mevis_hcd.yaml", 8, "data/mevis"),
}
# The keys the paper's released training scripts set differently from its Ref-YouTube-VOS script.
PAPER_KEYS = {
    "davis_hcd.yaml": {"dataset": "davis", "data_root": "data/ref-davis", "output_dir": "outputs/davis_hcd",
                       "train.epochs": 3, "train.lr": 2.5e-5, "train.lr_drop": [6, 8], "train.batch_size": 1},
    "a2d_hcd.yaml": {"dataset": "a2d", "data_root": "data/a2d_sentences", "output_dir": "outputs/a2d_hcd",
                     "train.epochs": 6, "train.lr": 1e-4, "train.lr_drop": [3, 5], "train.batch_size": 1},
    # MeViS: the Ref-YouTube-VOS recipe without clip reversal (motion expressions).
    "mevis_hcd.yaml": {"dataset": "mevis", "data_root": "data/mevis", "output_dir": "outputs/mevis_hcd",
                       "data.reverse_prob": 0.0},
}


def dry_run(script: str, *args: str, shell: str = "bash", **env: str) -> tuple[list[list[str]], list[str]]:
    """Run ``script`` with DRY_RUN=1; returns its printed commands (split into words) and the config blocks."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("GPUS", "OUTPUT_DIR", "WEIGHTS", "DATA_ROOT", "RESUME", "CHECKPOINT", "DEVICE")}
    environment.update(DRY_RUN="1", PYTHON=sys.executable, **env)
    result = subprocess.run([shell, str(REPO / "scripts" / script), *args], env=environment, capture_output=True,
                            text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "# DRY_RUN=1: nothing was run"
    commands = [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]
    blocks = "\n".join(line for line in lines[:-1] if not line.startswith("+ ")).split("# resolved config:")
    return commands, blocks[1:]


def parse_block(block: str) -> dict:
    """The YAML of one config block printed after its '# resolved config: <source> ...' header line."""
    return yaml.safe_load(block.split("\n", 1)[1])


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def nested(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A file load_checkpoint accepts, storing a recognisable config (what the test scripts print)."""
    cfg = load_config(REPO / "configs" / "a2d_hcd.yaml")
    cfg["seed"] = 7
    state = dict.fromkeys(CHECKPOINT_KEYS)
    state.update(model={}, config=cfg, epoch=6, step=1, data_position=0, rng=[])
    path = tmp_path_factory.mktemp("run") / "last.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_scripts_are_valid_strict_bash(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if script.name.startswith("dist_"):
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert '"$@"' in text  # extra flags are passed through


@pytest.mark.parametrize("name", sorted(PAPER_KEYS))
def test_configs_hold_the_papers_hyper_parameters_and_otherwise_ytvos(name):
    cfg, ytvos = load_config(REPO / "configs" / name), load_config(REPO / "configs" / "ytvos_hcd.yaml")
    for key, value in PAPER_KEYS[name].items():
        assert nested(cfg, key) == value, key
        *parents, leaf = key.split(".")
        for node in (cfg, ytvos):
            del (nested(node, ".".join(parents)) if parents else node)[leaf]
    assert cfg == ytvos


@pytest.mark.parametrize("script", sorted(TRAIN))
def test_train_dry_run_defaults(script):
    config, gpus, data_root = TRAIN[script]
    (command,), (block,) = dry_run(script)
    assert command[:1] == ["torchrun"] and flag(command, "--nproc_per_node") == str(gpus)
    assert command[command.index("--nproc_per_node") + 2] == "main.py"
    assert flag(command, "--config") == config and "--resume" not in command
    assert flag(command, "--data_root") == data_root and flag(command, "--weights") == "weight"
    expected = load_config(REPO / config)
    expected["weights"], expected["data_root"] = "weight", data_root
    assert parse_block(block) == expected


def test_train_dry_run_env_overrides_and_passed_through_flags(tmp_path):
    (command,), (block,) = dry_run("dist_train_davis_hcd.sh", "--set", "train.lr=3e-5", "--epochs", "2",
                                   GPUS="3", OUTPUT_DIR=str(tmp_path / "out"), WEIGHTS=str(tmp_path / "w"),
                                   DATA_ROOT=str(tmp_path / "d"), NNODES="2", NODE_RANK="1", MASTER_ADDR="node0")
    assert flag(command, "--nproc_per_node") == "3" and flag(command, "--nnodes") == "2"
    assert flag(command, "--node_rank") == "1" and flag(command, "--master_addr") == "node0"
    assert command[-4:] == ["--set", "train.lr=3e-5", "--epochs", "2"]
    cfg = parse_block(block)
    assert cfg["output_dir"] == str(tmp_path / "out") and cfg["weights"] == str(tmp_path / "w")
    assert cfg["data_root"] == str(tmp_path / "d")
    assert cfg["train"]["lr"] == 3e-5 and cfg["train"]["epochs"] == 2
    assert cfg["dataset"] == "davis" and cfg["train"]["lr_drop"] == [6, 8]


def test_train_resume_uses_the_checkpoint_config(checkpoint):
    (command,), (block,) = dry_run("dist_train_a2d_hcd.sh", RESUME=str(checkpoint))
    assert flag(command, "--resume") == str(checkpoint) and "--config" not in command
    assert parse_block(block)["seed"] == 7  # from the checkpoint, not configs/a2d_hcd.yaml


def test_started_with_sh_it_reruns_itself_in_bash():
    (command,), _ = dry_run("dist_train_ytvos_hcd.sh", shell="sh")
    assert command[0] == "torchrun" and flag(command, "--config") == "configs/ytvos_hcd.yaml"


@pytest.mark.parametrize("script,entry,data_root", [
    ("dist_test_ytvos_hcd.sh", "inference_ytvos.py", "data/ref-youtube-vos"),
    ("dist_test_davis_hcd.sh", "inference_davis.py", "data/ref-davis"),
])
def test_inference_dry_runs(script, entry, data_root, checkpoint, tmp_path):
    (command,), (block,) = dry_run(script, "--clip_len", "12", CHECKPOINT=str(checkpoint), DEVICE="cpu",
                                   OUTPUT_DIR=str(tmp_path / "pred"))
    assert command[:2] == [sys.executable, entry]
    assert flag(command, "--checkpoint") == str(checkpoint) and flag(command, "--device") == "cpu"
    assert flag(command, "--data_root") == data_root and flag(command, "--output_dir") == str(tmp_path / "pred")
    assert command[-2:] == ["--clip_len", "12"]
    if entry == "inference_davis.py":
        assert flag(command, "--davis_root") == "data/DAVIS"  # scores the four annotators after inference
    cfg = parse_block(block)
    assert cfg["seed"] == 7 and cfg["data_root"] == data_root


@pytest.mark.parametrize("script,entry", [("dist_test_ytvos_hcd.sh", "inference_ytvos.py"),
                                          ("dist_test_davis_hcd.sh", "inference_davis.py"),
                                          ("dist_test_mevis_hcd.sh", "inference_mevis.py")])
def test_inference_with_gpus_runs_torchrun_over_them(script, entry, checkpoint):
    commands, _ = dry_run(script, CHECKPOINT=str(checkpoint), DEVICE="cpu", GPUS="3")
    assert commands[0][:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
                               entry]
    assert flag(commands[0], "--checkpoint") == str(checkpoint)


@pytest.mark.parametrize("split", ["valid", "valid_u"])
def test_mevis_dry_run_writes_the_split_and_scores_valid_u(split, checkpoint, tmp_path):
    commands, (block,) = dry_run("dist_test_mevis_hcd.sh", "--clip_len", "12", CHECKPOINT=str(checkpoint),
                                 DEVICE="cpu", SPLIT=split)
    inference = commands[0]
    assert inference[:2] == [sys.executable, "inference_mevis.py"] and inference[-2:] == ["--clip_len", "12"]
    assert flag(inference, "--split") == split and flag(inference, "--data_root") == "data/mevis"
    assert flag(inference, "--output_dir") == f"outputs/mevis_hcd/{split}"
    assert flag(inference, "--checkpoint") == str(checkpoint) and flag(inference, "--device") == "cpu"
    if split == "valid":
        assert len(commands) == 1
    else:
        (scoring,) = commands[1:]
        assert scoring[:3] == [sys.executable, "inference_mevis.py", "--score"]
        assert flag(scoring, "--pred_dir") == "outputs/mevis_hcd/valid_u" and flag(scoring, "--gt_root") == "data/mevis"
    assert parse_block(block)["seed"] == 7


def test_a2d_dry_run_evaluates_a2d_then_jhmdb(checkpoint, tmp_path):
    commands, blocks = dry_run("dist_test_a2d_hcd.sh", CHECKPOINT=str(checkpoint), GPUS="2",
                               OUTPUT_DIR=str(tmp_path / "eval"), JHMDB_ROOT=str(tmp_path / "jhmdb"))
    assert len(commands) == 2 and len(blocks) == 2
    for command in commands:
        assert command[:4] == ["torchrun", "--nproc_per_node", "2", "main.py"]
        assert "--eval" in command and flag(command, "--resume") == str(checkpoint)
    assert flag(commands[0], "--data_root") == "data/a2d_sentences" and "--set" not in commands[0]
    assert flag(commands[1], "--data_root") == str(tmp_path / "jhmdb")
    a2d, jhmdb = (parse_block(block) for block in blocks)
    assert (a2d["dataset"], jhmdb["dataset"]) == ("a2d", "jhmdb")
    assert a2d["output_dir"] == jhmdb["output_dir"] == str(tmp_path / "eval")


def test_missing_checkpoint_is_reported_not_fatal_in_a_dry_run(tmp_path):
    environment = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "CHECKPOINT": str(tmp_path / "no.pth")}
    result = subprocess.run(["bash", str(REPO / "scripts" / "dist_test_ytvos_hcd.sh")], env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert f"# config: the one stored in {tmp_path / 'no.pth'}, which does not exist yet" in result.stdout


@pytest.mark.parametrize("preset", [None, "expandable_segments:False"])
def test_launchers_turn_on_expandable_segments_unless_the_environment_says_otherwise(preset):
    environment = {key: value for key, value in os.environ.items() if key != "PYTORCH_CUDA_ALLOC_CONF"}
    if preset is not None:
        environment["PYTORCH_CUDA_ALLOC_CONF"] = preset
    result = subprocess.run(["bash", "-c", ". scripts/launch_common.sh && python3 -c 'import os; "
                             "print(os.environ[\"PYTORCH_CUDA_ALLOC_CONF\"])'"], env=environment, cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (preset or "expandable_segments:True")  # exported: torchrun's workers see it
