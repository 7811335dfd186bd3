"""Session-wide fixtures: a small RefShapes dataset and the tiny pretrained weights, each built once."""
import os
from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: big single-sample models on a shared CPU, where a second OpenMP thread
    spinning on a busy core costs several times what it brings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
