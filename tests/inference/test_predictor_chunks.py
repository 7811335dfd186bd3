"""Predictor.captions_per_pass: a clip's sentences in chunks, the frames encoded once, the same probabilities."""
import numpy as np
import pytest
import torch

from inference.predictor import Predictor
from models import build_model
from models.pretrained import load_pretrained
from tests.inference.test_predictor import FLOAT32_STEP, FLOAT64_SLACK, SENTENCES, tiny_config
from util.nested_tensor import NestedTensor

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES = (np.random.default_rng(1).random((4, 40, 56, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_and_cfg(tiny_weights):
    torch.manual_seed(0)
    cfg = tiny_config(tiny_weights)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    return model.eval().double(), cfg  # float64: chunking changes only the order of sums (test_predictor.py)


@pytest.fixture
def calls(model_and_cfg, monkeypatch):
    """Counts of the caption-independent stages (frozen encoding, UNet stem, TCMR stem) and of the UNet walk."""
    backbone = model_and_cfg[0].backbone
    counts = {"encode": 0, "unet_stem": 0, "stride4": 0, "unet": 0}

    def counted(name, function):
        def call(*args):
            counts[name] += 1
            return function(*args)
        return call

    monkeypatch.setattr(backbone, "encode_frames", counted("encode", backbone.encode_frames))
    monkeypatch.setattr(backbone.unet_features, "stem", counted("unet_stem", backbone.unet_features.stem))
    handles = [module.register_forward_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
               for name, module in (("stride4", backbone.temporal_stem), ("unet", backbone.unet_features))]
    yield counts
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("per_pass,unet_calls", [(None, 1), (2, 2), (1, 3)])
def test_chunks_of_sentences_match_one_pass_and_encode_the_frames_once(model_and_cfg, calls, per_pass, unet_calls):
    model, cfg = model_and_cfg
    expected = Predictor(model, cfg).probabilities(FRAMES, SENTENCES)
    for name in calls:
        calls[name] = 0
    probabilities = Predictor(model, cfg, captions_per_pass=per_pass).probabilities(FRAMES, SENTENCES)
    assert probabilities.shape == (3, 4, 40, 56)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=FLOAT32_STEP + FLOAT64_SLACK)
    assert calls == {"encode": 1, "unet_stem": 1, "stride4": 1, "unet": unet_calls}
    assert model.backbone._reuse is None  # nothing kept once the clip is done


def test_reuse_serves_only_the_same_clip(model_and_cfg, calls):
    backbone = model_and_cfg[0].backbone
    generator = torch.Generator().manual_seed(0)
    clips = [NestedTensor(torch.randn(1, 3, 3, 32, 32, generator=generator, dtype=torch.float64),
                          torch.zeros(1, 3, 32, 32, dtype=bool))
             for _ in range(2)]
    with torch.no_grad():
        alone = [backbone(clip, SENTENCES[:1]).features[0] for clip in clips]
        with backbone.reusing_frames():
            reused = [backbone(clip, [sentence]).features[0] for clip in clips for sentence in SENTENCES[:2]]
    assert calls["encode"] == 2 + 2  # alone: one per clip; reused: one per clip, not one per sentence
    torch.testing.assert_close(reused[0], alone[0])
    torch.testing.assert_close(reused[2], alone[1])  # the second clip got its own encoding
    assert not torch.allclose(reused[0], reused[1])  # and each sentence its own features


def test_captions_per_pass_must_be_positive(model_and_cfg):
    model, cfg = model_and_cfg
    with pytest.raises(ValueError, match="captions_per_pass"):
        Predictor(model, cfg, captions_per_pass=0)
