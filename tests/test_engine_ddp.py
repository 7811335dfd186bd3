"""Two-process DDP training on CPU (gloo) through torchrun, and the per-rank data order."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine import to_float32, weighted_losses
from tests.train_standins import TinyModel, tiny_config
from util.checkpoint import load_checkpoint
from util.distributed import epoch_order

REPO = Path(__file__).resolve().parents[1]


def test_weighted_losses_multiply_every_weighted_term_and_refuse_missing_ones():
    losses = {"loss_a": torch.tensor(2.0), "loss_b": torch.tensor(3.0), "metric": torch.tensor(9.0)}
    terms = weighted_losses(losses, {"loss_a": 0.5, "loss_b": 2.0})
    assert {key: value.item() for key, value in terms.items()} == {"loss_a": 1.0, "loss_b": 6.0}
    with pytest.raises(KeyError, match=r"no \['loss_c'\]"):
        weighted_losses(losses, {"loss_a": 1.0, "loss_c": 1.0})


def test_outputs_reach_the_criterion_in_float32():
    outputs = {"pred": torch.ones(2, dtype=torch.bfloat16), "index": torch.ones(2, dtype=torch.long),
               "aux": [{"pred": torch.ones(1, dtype=torch.float16)}], "name": "x"}
    cast = to_float32(outputs)
    assert cast["pred"].dtype == torch.float32 and cast["aux"][0]["pred"].dtype == torch.float32
    assert cast["index"].dtype == torch.long and cast["name"] == "x"


def test_epoch_order_deals_one_seeded_permutation_to_the_ranks():
    shards = [epoch_order(11, seed=3, epoch=2, rank=rank, world_size=3) for rank in range(3)]
    assert [len(shard) for shard in shards] == [3, 3, 3]  # 11 -> 9 usable, 3 per rank
    dealt = [index for step in zip(*shards) for index in step]
    assert len(set(dealt)) == 9 and set(dealt) <= set(range(11))
    assert epoch_order(11, 3, 2, 0, 1)[:9] == dealt  # the single-process order, dealt round-robin
    assert epoch_order(11, 3, 2, 1, 3) == shards[1]  # a pure function of its arguments
    assert sorted(epoch_order(11, 3, 3, 0, 1)) == list(range(11))
    assert epoch_order(11, 3, 3, 0, 1) != epoch_order(11, 3, 2, 0, 1)  # reshuffled every epoch
    assert epoch_order(11, 4, 2, 0, 1) != epoch_order(11, 3, 2, 0, 1)


def test_two_process_gloo_training_keeps_the_ranks_identical(tmp_path):
    out = tmp_path / "out"
    cfg = tiny_config(seed=7, epochs=3, lr_drop=[1], checkpoint_every=2)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.train_standins", "--config", str(tmp_path / "ddp.yaml"), "--device", "cpu",
               "--max_steps", "4", "--output_dir", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    rank0, rank1 = torch.load(out / "rank0.pth", weights_only=True), torch.load(out / "rank1.pth", weights_only=True)
    saved = load_checkpoint(out / "last.pth")
    assert rank0.keys() == rank1.keys() == saved["model"].keys()
    parameters = {name for name, p in TinyModel(0.5).named_parameters() if p.requires_grad}
    for key in rank0:
        assert torch.equal(rank0[key], saved["model"][key]), key  # rank 0 writes the checkpoints
        if key in parameters:  # BatchNorm statistics: each rank's last forward updates its own copy
            assert torch.equal(rank0[key], rank1[key]), key
    torch.manual_seed(7)  # main.py seeds like this before building the model
    initial = TinyModel(0.5).state_dict()
    assert not torch.equal(rank0["proj.weight"], initial["proj.weight"])

    # 8 usable clips / 2 ranks / batch 2 = 2 steps an epoch: the 4 steps end epoch 2.
    assert (saved["epoch"], saved["step"], saved["data_position"]) == (2, 4, 0)
    assert len(saved["rng"]) == 2  # one RNG state per rank
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 1), (0, 2), (1, 3), (1, 4)]
    assert all(math.isfinite(r[k]) for r in records for k in ("loss", "loss_pred", "loss_pred_0"))
    assert [r["lr"] for r in records] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
