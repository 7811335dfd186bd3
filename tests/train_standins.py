"""Tiny stand-ins for HCD's model, criterion and training dataset, with the interfaces main.py relies on.

- ``build_model(cfg) -> (TinyModel, TinyCriterion)``: a frozen "pretrained" layer, trainable layers with
  BatchNorm statistics, dropout (``cfg["model"]["dropout"]``) and a ``reference_points`` layer (the second
  parameter group); the criterion returns unweighted losses and has a ``weight_dict``.
- ``build_dataset(name, split, cfg) -> TinyClips``: ``NUM_CLIPS`` clips ``(frames [T, 3, H, W],
  target)`` whose random augmentation is a pure function of ``(seed, epoch, index)`` via ``set_epoch``.

``tiny_config(seed, **train)`` is a main.py config for them. In-process tests install them with
``install(monkeypatch)`` (which patches ``main.build_model`` / ``main.build_dataset``). Run as a module
(``torchrun ... -m tests.train_standins <main.py arguments>``), this file calls ``run_main(build_model)``: it
registers the builders under the import names ``models.build_model`` / ``datasets.build_dataset`` before importing
main, runs ``main.main()``, then each rank writes its trainable weights to ``<--output_dir>/rank<RANK>.pth`` and
the process ends with main's exit status.
"""
import os
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

NUM_FRAMES, HEIGHT, WIDTH = 2, 6, 5


class TinyClips(Dataset):
    def __init__(self, num_clips: int, seed: int):
        self.num_clips, self.seed, self.epoch = num_clips, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        content = torch.Generator().manual_seed(index)
        frames = torch.rand(NUM_FRAMES, 3, HEIGHT, WIDTH, generator=content)
        target = {"value": frames.mean(dim=(0, 2, 3))[:2] * 4 - 2, "caption": f"clip {index}"}
        augment = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + index)
        if torch.rand((), generator=augment) < 0.5:
            frames = frames.flip(-1)
        frames = frames + 0.3 * torch.randn(frames.shape, generator=augment)
        return frames, target


class TinyModel(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.base = nn.Linear(3, 8)
        self.base.requires_grad_(False)  # the frozen pretrained part: not in checkpoints
        self.proj = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(8, 2)
        self.reference_points = nn.Linear(8, 2)

    def forward(self, samples, captions: list[str], targets: list[dict] | None) -> dict:
        features = samples.tensors.mean(dim=(1, 3, 4))  # [B, 3]
        hidden = self.dropout(torch.relu(self.norm(self.proj(self.base(features)))))
        return {"pred": self.head(hidden), "aux": [{"pred": self.reference_points(hidden)}]}


class TinyCriterion(nn.Module):
    weight_dict = {"loss_pred": 1e-3, "loss_pred_0": 5e-4}  # small: fp16 AMP then rarely skips a step

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        values = torch.stack([target["value"] for target in targets])
        return {"loss_pred": F.mse_loss(outputs["pred"], values),
                "loss_pred_0": F.l1_loss(outputs["aux"][0]["pred"], values),
                "unweighted_metric": outputs["pred"].abs().mean()}


BUILT_MODELS: list[TinyModel] = []


def build_model(cfg: dict) -> tuple[TinyModel, TinyCriterion]:
    model = TinyModel(cfg["model"]["dropout"])
    BUILT_MODELS.append(model)
    return model, TinyCriterion()


NUM_CLIPS = 9  # clips of the stand-in dataset


def build_dataset(name: str, split: str, cfg: dict) -> TinyClips:
    return TinyClips(NUM_CLIPS, cfg["seed"])


def tiny_config(seed: int, **train) -> dict:
    """A complete main.py config for the stand-ins: the tiny config (configs/refshapes_tiny.yaml, every key of the
    schema) with dropout 0.5 and the stand-ins' optimiser; 9 clips, batch 2 (4 steps an epoch, one clip dropped).

    ``train`` adds the schedule (``epochs``, ``lr_drop``, ``checkpoint_every``) to the fixed optimiser settings.
    ``output_dir`` is a placeholder: the tests pass ``--output_dir``.
    """
    from util.config import load_config  # not at the top: run as a module, nothing of the project loads first

    cfg = load_config(os.path.join(os.path.dirname(__file__), os.pardir, "configs", "refshapes_tiny.yaml"))
    cfg.update({"dataset": "tiny", "data_root": "unused", "weights": "unused", "output_dir": "set by the test",
                "seed": seed})
    cfg["model"]["dropout"] = 0.5
    cfg["data"]["size_divisibility"] = 4
    cfg["train"].update({"lr": 0.01, "lr_linear_proj_mult": 0.1, "weight_decay": 0.01, "clip_max_norm": 1.0,
                         "batch_size": 2, "num_workers": 0, "amp": "none", "log_every": 1, **train})
    return cfg


def install(monkeypatch) -> None:
    """Make ``main`` build the stand-ins (``monkeypatch``: a pytest MonkeyPatch, undone after the test)."""
    import main  # not at the top: run as a module, this file must register its builders before main is imported

    monkeypatch.setattr(main, "build_model", build_model)
    monkeypatch.setattr(main, "build_dataset", build_dataset)


def run_main(model_builder) -> int:
    """``main.main(sys.argv[1:])`` with ``model_builder`` and ``build_dataset`` as HCD's builders, then save this
    rank's trainable weights to ``<--output_dir>/rank<RANK>.pth``; returns main's exit status."""
    # Stand-in packages under the real import names, so main.py binds these builders and the launched processes
    # skip importing HCD's models (diffusers, transformers, peft: many seconds per process).
    for package, name, builder in (("models", "build_model", model_builder),
                                   ("datasets", "build_dataset", build_dataset)):
        sys.modules[package] = types.ModuleType(package)
        setattr(sys.modules[package], name, builder)
    import main
    from util.checkpoint import trainable_state_dict

    status = main.main(sys.argv[1:])
    output_dir = main.build_parser().parse_args(sys.argv[1:]).output_dir  # the tests always pass --output_dir
    rank = os.environ.get("RANK", "0")  # torchrun sets it; a plain ``python -m`` run is rank 0
    torch.save(trainable_state_dict(BUILT_MODELS[-1]), os.path.join(output_dir, f"rank{rank}.pth"))
    return status


if __name__ == "__main__":
    sys.exit(run_main(build_model))
