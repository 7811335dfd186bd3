"""docs/predictor.ipynb runs headless on the tiny weights, a checkpoint and RefShapes, and shows what it promises."""
import base64
import io
import json
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from PIL import Image

from datasets import read_meta_expressions
from models import build_model
from util.checkpoint import build_checkpoint, save_checkpoint
from util.config import load_config

REPO = Path(__file__).resolve().parent.parent
KERNEL = "hcd-test-python"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernelspec running ipykernel in this interpreter (whatever kernels the machine has installed)."""
    folder = tmp_path / "jupyter" / "kernels" / KERNEL
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "HCD test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


@pytest.fixture
def checkpoint(tiny_weights, refshapes_root, tmp_path) -> Path:
    cfg = load_config(REPO / "configs" / "refshapes_tiny.yaml")
    cfg["weights"], cfg["data_root"] = str(tiny_weights), str(refshapes_root)
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = 64
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1])
    state = build_checkpoint(model, optimizer, scheduler, None, epoch=1, step=1, data_position=0, rng=[], config=cfg)
    (tmp_path / "run").mkdir()
    return save_checkpoint(state, tmp_path / "run", "checkpoint_epoch001.pth")


def outputs_of(cell) -> tuple[str, list[dict]]:
    """The printed text of a code cell and its display outputs."""
    text = "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")
    return text, [output for output in cell.outputs if output.output_type == "display_data"]


def test_notebook_runs_headless_and_shows_masks(kernel_name, checkpoint, tiny_weights, refshapes_root, monkeypatch):
    monkeypatch.setenv("HCD_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("HCD_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("HCD_DATA_ROOT", str(refshapes_root))
    monkeypatch.setenv("HCD_DEVICE", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(REPO / "docs" / "predictor.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # stored clean
    NotebookClient(notebook, timeout=300, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(REPO / "docs")}}).execute()  # raises on any cell error

    videos = read_meta_expressions(refshapes_root, "valid")
    entry = videos[sorted(videos)[0]]
    num_sentences = min(3, len(entry["expressions"]))
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    printed = "".join(outputs_of(cell)[0] for cell in code_cells)
    assert f"checkpoint {checkpoint}\n" in printed
    assert f"mask shape: ({num_sentences}, {len(entry['frames'])}, 64, 64)\n" in printed
    assert printed.count("J = ") == num_sentences

    images = [output for cell in code_cells for output in outputs_of(cell)[1] if "image/png" in output.data]
    assert len(images) == 1
    with Image.open(io.BytesIO(base64.b64decode(images[0].data["image/png"]))) as grid:
        assert grid.width > 300 and grid.height > 100 * num_sentences  # a grid of frames, one row a sentence
