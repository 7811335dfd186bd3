"""Session-wide fixtures: a small RefShapes dataset, the tiny pretrained weights and an untrained tiny model saved
with them, each built once."""
import os
from pathlib import Path

import pytest
import torch

if "OMP_NUM_THREADS" not in os.environ:  # the CI machines' two cores; OMP_NUM_THREADS=1 runs the suite on one thread
    torch.set_num_threads(2)
if not torch.cuda.is_available():
    # Without a GPU the Triton kernels of models.ops run in Triton's interpreter. @triton.jit reads this variable
    # when a function is decorated, triton's own library included, so it must be set before anything imports
    # triton (diffusers and peft do): here, before any test module is collected.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def refshapes_root(tmp_path_factory) -> Path:
    """A small RefShapes dataset in the Ref-YouTube-VOS layout (train + valid with ground truth)."""
    from datasets.refshapes import generate_refshapes

    root = tmp_path_factory.mktemp("refshapes")
    generate_refshapes(root, num_videos=8, num_valid_videos=3, num_frames=8, size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """The tiny, randomly initialised pretrained folder in the layout of the real ``weight/``."""
    from testing.tiny_weights import build_tiny_weights

    root = tmp_path_factory.mktemp("weights")
    build_tiny_weights(root, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_weights, refshapes_root, tmp_path_factory) -> Path:
    """An untrained tiny HCD (seed 0) on ``refshapes_root`` at 32 px, saved by ``Predictor.save_pretrained``."""
    from inference.predictor import Predictor
    from models import build_model
    from models.pretrained import load_pretrained
    from util.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "refshapes_tiny.yaml")
    cfg.update(weights=str(tiny_weights), data_root=str(refshapes_root))
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = 32
    torch.manual_seed(0)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    return Predictor(model, cfg).save_pretrained(tmp_path_factory.mktemp("model") / "hcd")


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: big single-sample models on a shared CPU, where a second OpenMP thread
    spinning on a busy core costs several times what it brings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
