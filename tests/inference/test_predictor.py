"""The inference API (inference/predictor.py): clip windows, preprocessing, shared passes, overlap averaging,
checkpoint and save_pretrained loading."""
import copy
import random
import traceback
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from inference.clips import clip_windows
from inference.predictor import Predictor
from models import build_model
from models.pretrained import load_pretrained
from util.checkpoint import CHECKPOINT_KEYS, trainable_state_dict
from util.amp import INFERENCE_AMP, autocast
from util.config import ConfigError, load_config
from util.nested_tensor import nested_tensor_from_videos

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "refshapes_tiny.yaml"
SENTENCES = ["the red circle", "a blue square moving left", "the small green triangle"]
# Comparisons that differ only in the order of floating-point sums (batched sentences, chunks) run the model in
# float64: the logits then agree to ~1e-13 (unit roundoff 1.1e-16 times the depth and the logits' size, < 100),
# and the float32 probabilities handed back differ by at most one float32 rounding step, 2^-24 below 1. In float32
# the same comparisons differ by ~1e-5, by an amount that depends on the CPU's kernels and thread count.
FLOAT32_STEP = 2.0 ** -24
FLOAT64_SLACK = 1e-12


def tiny_config(weights: Path) -> dict:
    cfg = load_config(CONFIG)
    cfg["weights"] = str(weights)
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = 32  # small inputs keep the tests fast
    return cfg


@pytest.fixture(scope="module")
def predictor(tiny_weights) -> Predictor:
    torch.manual_seed(0)
    cfg = tiny_config(tiny_weights)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    return Predictor(model, cfg)


@pytest.fixture(scope="module")
def predictor64(predictor) -> Predictor:
    """The same model in float64."""
    return Predictor(copy.deepcopy(predictor.model).double(), predictor.cfg)


@pytest.fixture(scope="module")
def video() -> np.ndarray:
    """5 frames of 40 x 56 (H x W): not a multiple of the stride, so resizing and padding both matter."""
    return (np.random.default_rng(0).random((5, 40, 56, 3)) * 255).astype(np.uint8)


def test_clip_windows_hand_cases():
    assert clip_windows(5, None) == [(0, 5)]
    assert clip_windows(5, 3, 1) == [(0, 3), (2, 5)]
    assert clip_windows(6, 3, 1) == [(0, 3), (2, 5), (4, 6)]
    assert clip_windows(4, 2) == [(0, 2), (2, 4)]
    assert clip_windows(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert clip_windows(3, 36) == [(0, 3)]
    for bad in ((5, 0, 0), (5, 3, 3), (5, 3, -1), (0, 3, 0)):
        with pytest.raises(ValueError):
            clip_windows(*bad)


def test_probabilities_shape_range_and_segment(predictor, video):
    probabilities = predictor.probabilities(video, SENTENCES)
    assert probabilities.shape == (3, 5, 40, 56) and probabilities.dtype == np.float32
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert probabilities.std() > 0  # a real mask, not a constant
    masks = predictor.segment(video, SENTENCES)
    assert masks.dtype == np.bool_
    np.testing.assert_array_equal(masks, probabilities > predictor.threshold)
    np.testing.assert_array_equal(predictor.segment(video, SENTENCES, threshold=0.9), probabilities > 0.9)


def test_pil_frames_and_uint8_array_give_the_same_result(predictor, video):
    from_pil = predictor.probabilities([Image.fromarray(frame) for frame in video], SENTENCES[:1])
    np.testing.assert_array_equal(from_pil, predictor.probabilities(video, SENTENCES[:1]))


def test_sentences_are_normalised_like_training_captions(predictor, video):
    np.testing.assert_array_equal(predictor.probabilities(video, ["  The RED   circle "]),
                                  predictor.probabilities(video, ["the red circle"]))


def test_k_sentences_in_one_pass_match_one_pass_per_sentence(predictor64, video):
    together = predictor64.probabilities(video, SENTENCES)
    assert together.dtype == np.float32
    for index, sentence in enumerate(SENTENCES):
        alone = predictor64.probabilities(video, [sentence])
        np.testing.assert_allclose(together[index], alone[0], rtol=0, atol=FLOAT32_STEP + FLOAT64_SLACK)


def test_float64_model_computes_in_float64_and_agrees_with_float32(predictor, predictor64, video):
    """The float64 model is the float32 one at a higher precision (not another model): they agree to float32's
    accumulated rounding, while float64 batching differences are far below it (test above)."""
    np.testing.assert_allclose(predictor64.probabilities(video, SENTENCES[:1]),
                               predictor.probabilities(video, SENTENCES[:1]), rtol=0, atol=1e-3)
    assert predictor64.model.dtype == torch.float64


def test_overlapping_clips_cover_every_frame_and_average(predictor, video):
    windowed = predictor.probabilities(video, SENTENCES[:2], clip_len=3, overlap=1)
    first = predictor.probabilities(video[0:3], SENTENCES[:2])
    second = predictor.probabilities(video[2:5], SENTENCES[:2])
    np.testing.assert_allclose(windowed[:, 0:2], first[:, 0:2], atol=1e-6)
    np.testing.assert_allclose(windowed[:, 3:5], second[:, 1:3], atol=1e-6)
    np.testing.assert_allclose(windowed[:, 2], (first[:, 2] + second[:, 0]) / 2, atol=1e-6)
    # Without overlap the clips just follow each other.
    disjoint = predictor.probabilities(video, SENTENCES[:2], clip_len=3)
    np.testing.assert_allclose(disjoint[:, 0:3], first, atol=1e-6)
    np.testing.assert_allclose(disjoint[:, 3:5], predictor.probabilities(video[3:5], SENTENCES[:2]), atol=1e-6)


class PaddingProbe(nn.Module):
    """Stands in for HCD: logit 0 on the frames, 100 on the padding; records what it was given."""

    def forward(self, samples, captions):
        self.shape, self.captions = tuple(samples.tensors.shape), list(captions)
        logits = samples.mask.float() * 100.0  # [1, T, Hp, Wp]
        return {"pred_masks": logits.expand(len(captions), -1, -1, -1)}


def test_one_clip_with_all_captions_padding_cropped_before_upsampling(tiny_weights):
    cfg = tiny_config(tiny_weights)
    cfg["data"]["test_size"], cfg["data"]["max_size"] = 64, 200
    probe = PaddingProbe()
    predictor = Predictor(probe, cfg)
    frames = np.zeros((4, 30, 50, 3), dtype=np.uint8)  # resized to 64 x 106, padded to 64 x 128
    probabilities = predictor.probabilities(frames, ["A", "b"], clip_len=3)
    assert probe.shape == (1, 1, 3, 64, 128)  # the last clip: frame 3 alone
    assert probe.captions == ["a", "b"]
    # Any padding left in the upsampled logits would push probabilities towards 1.
    np.testing.assert_array_equal(probabilities, np.full((2, 4, 30, 50), 0.5, dtype=np.float32))


def test_bad_inputs_are_rejected(predictor, video):
    with pytest.raises(ValueError, match="sentence 1 is empty"):
        predictor.probabilities(video, ["the red circle", "  "])
    with pytest.raises(ValueError, match="list of strings"):
        predictor.probabilities(video, "the red circle")
    with pytest.raises(ValueError, match="one size"):
        predictor.probabilities([Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))], SENTENCES[:1])
    with pytest.raises(ValueError, match="uint8"):
        predictor.probabilities(video.astype(np.float32), SENTENCES[:1])
    with pytest.raises(ValueError, match="amp"):
        Predictor(predictor.model, predictor.cfg, amp="fp8")


PRODUCT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def bf16_product_counter(model: nn.Module) -> tuple[list[int], list]:
    """``(count, hooks)``: ``count[0]`` grows by one for each linear or convolution layer call that returns bf16."""
    count = [0]

    def hook(module, inputs, output):
        count[0] += output.dtype == torch.bfloat16

    return count, [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRODUCT_LAYERS)]


def test_bf16_autocast_stays_within_the_rounding_of_its_products(predictor, video):
    """bfloat16 keeps 8 significant bits, so rounding to nearest errs by at most u = 2^-8 relative: an autocast
    product rounds its two inputs and its output, a relative error of at most 3u = 3 * 2^-8 in all. To first order,
    the independent rounding errors of the N products of a forward add up in quadrature (a probabilistic bound)
    through layers that keep the scale (normalised), so the mask logits' norm-wise relative error stays below
    3 * 2^-8 * sqrt(N). N counts the linear and convolution layers (566 calls in the tiny model: 0.28; attention's
    own products would only raise it); measured 0.036 with oneDNN's AVX2 kernels, 0.055 with its AVX-512 bf16
    kernels."""
    bf16 = Predictor(predictor.model, predictor.cfg, amp="bf16")
    probabilities = bf16.probabilities(video, SENTENCES[:1])
    assert probabilities.dtype == np.float32
    assert np.abs(probabilities - predictor.probabilities(video, SENTENCES[:1])).max() > 0  # autocast is on

    clip, _ = predictor.transforms([Image.fromarray(frame) for frame in video], {}, random.Random(0))
    samples = nested_tensor_from_videos([clip], predictor.size_divisibility)
    count, hooks = bf16_product_counter(predictor.model)
    with torch.inference_mode():
        exact = predictor.model(samples, SENTENCES[:1])["pred_masks"]
        with autocast("cpu", "bf16", INFERENCE_AMP):
            rounded = predictor.model(samples, SENTENCES[:1])["pred_masks"].float()
    for hook in hooks:
        hook.remove()
    assert count[0] > 100  # the products do run in bf16
    relative_error = float((rounded - exact).norm() / exact.norm())
    assert relative_error < 3 * 2.0 ** -8 * count[0] ** 0.5


def test_save_pretrained_round_trip(predictor, video, tiny_weights, tmp_path):
    folder = tmp_path / "hcd"
    predictor.save_pretrained(folder)
    predictor.save_pretrained(folder)  # replacing an existing folder
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hcd"]  # no staging folder left behind
    assert sorted(path.name for path in folder.iterdir()) == ["config.yaml", "model.safetensors"]
    loaded = Predictor.from_pretrained(folder, tiny_weights)
    assert not loaded.model.training
    assert loaded.cfg == predictor.cfg
    np.testing.assert_array_equal(loaded.probabilities(video, SENTENCES), predictor.probabilities(video, SENTENCES))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Predictor.from_pretrained(folder, tiny_weights)


def test_from_checkpoint_loads_config_and_trained_weights(predictor, video, tiny_weights, tmp_path):
    # Perturb a trainable weight so that loading a fresh model without the checkpoint would differ.
    model = predictor.model
    state = trainable_state_dict(model)
    key = next(name for name in state if name.startswith("class_embed"))
    state[key] = state[key] + 1.0
    checkpoint = {name: None for name in CHECKPOINT_KEYS}
    checkpoint.update(model=state, config=predictor.cfg, epoch=1, step=1, data_position=0)
    path = tmp_path / "last.pth"
    torch.save(checkpoint, path)
    loaded = Predictor.from_checkpoint(path, tiny_weights)
    torch.testing.assert_close(loaded.model.state_dict()[key], state[key], rtol=0, atol=0)
    assert not loaded.model.training
    np.testing.assert_array_equal(Predictor.load(path, tiny_weights).probabilities(video, SENTENCES[:1]),
                                  loaded.probabilities(video, SENTENCES[:1]))



def test_a_checkpoint_whose_config_does_not_fit_names_the_checkpoint(predictor, tiny_weights, tmp_path):
    cfg = {**predictor.cfg, "train": {**predictor.cfg["train"], "lr": "fast"}}
    checkpoint = {name: None for name in CHECKPOINT_KEYS}
    checkpoint.update(model=trainable_state_dict(predictor.model), config=cfg, epoch=1, step=1, data_position=0)
    path = tmp_path / "odd.pth"
    torch.save(checkpoint, path)
    for load in (Predictor.from_checkpoint, Predictor.load):
        with pytest.raises(ConfigError, match=rf"(?s)the config saved in {path} does not fit.*'train\.lr' must be"):
            load(path, tiny_weights)

class ClipProbe:
    """Predictor's windowing over a fake clip pass whose output depends on the frame and its place in the clip."""

    probabilities, stream, _stream = Predictor.probabilities, Predictor.stream, Predictor._stream

    def _clip_probabilities(self, frames, sentences):
        pixels = np.stack([np.asarray(frame, dtype=np.float32)[..., 0] for frame in frames]) / 255  # [t, H, W]
        position = np.arange(len(frames), dtype=np.float32)[:, None, None]
        return np.stack([(pixels + position + k) / 100 for k in range(len(sentences))])  # [K, t, H, W]


def windowed_reference(probe, frames: np.ndarray, sentences, clip_len, overlap) -> np.ndarray:
    """[K, T, H, W]: every clip of ``clip_windows`` run on the whole list, overlaps averaged."""
    total = np.zeros((len(sentences), *frames.shape[:3]), dtype=np.float32)
    counts = np.zeros(len(frames), dtype=np.float32)
    for start, stop in clip_windows(len(frames), clip_len, overlap):
        total[:, start:stop] += probe._clip_probabilities([Image.fromarray(f) for f in frames[start:stop]], sentences)
        counts[start:stop] += 1
    return total / counts[None, :, None, None]


@pytest.mark.parametrize("num_frames,clip_len,overlap", [(6, 4, 2), (7, 3, 2), (5, 5, 1), (6, 5, 1), (2, 4, 1),
                                                         (9, 3, 0), (1, 1, 0), (8, 4, 3), (5, None, 0)])
def test_streaming_equals_the_clip_windows_of_the_whole_video(num_frames, clip_len, overlap):
    frames = (np.random.default_rng(num_frames).random((num_frames, 4, 5, 3)) * 255).astype(np.uint8)
    probe = ClipProbe()
    expected = windowed_reference(probe, frames, ["a", "b"], clip_len, overlap)  # [2, T, 4, 5]
    streamed = list(probe.stream(((str(i), f) for i, f in enumerate(frames)), ["a", "b"], clip_len, overlap))
    assert [name for name, _, _ in streamed] == [str(i) for i in range(num_frames)]
    for index, (_, frame, probabilities) in enumerate(streamed):
        np.testing.assert_array_equal(frame, frames[index])
        np.testing.assert_array_equal(probabilities, expected[:, index])
    np.testing.assert_array_equal(probe.probabilities(frames, ["a", "b"], clip_len, overlap), expected)


def test_streaming_hand_case():
    """3 frames, clips of 2 overlapping by 1: windows (0, 2), (1, 3); frame 1 is position 1 then 0."""
    frames = np.zeros((3, 1, 1, 3), dtype=np.uint8)
    streamed = [p[0, 0, 0] for _, _, p in ClipProbe().stream(enumerate(frames), ["a"], 2, 1)]
    np.testing.assert_allclose(streamed, [0.0, 0.005, 0.01])


class CountedFrames:
    """A lazy video of ``num_frames`` fresh arrays that records, at every read, how many of the frames it has
    handed out are still alive (weak references), i.e. held by the predictor or its caller."""

    def __init__(self, video: np.ndarray):
        self.video, self.alive, self.most_alive, self.read = video, [], 0, 0

    def __iter__(self):
        for index in range(len(self.video)):
            frame = self.video[index].copy()
            self.alive = [ref for ref in self.alive if ref() is not None] + [weakref.ref(frame)]
            self.most_alive = max(self.most_alive, len(self.alive))
            self.read += 1
            yield index, frame
            del frame


@pytest.mark.parametrize("clip_len,overlap", [(3, 1), (4, 2), (2, 0)])
def test_stream_holds_at_most_clip_len_frames_and_matches_segment(predictor, clip_len, overlap):
    video = (np.random.default_rng(1).random((7, 40, 56, 3)) * 255).astype(np.uint8)
    source = CountedFrames(video)
    results = predictor.stream(source, SENTENCES[:2], clip_len=clip_len, overlap=overlap)
    keys, masks, read_at_first = [], [], None
    for result in results:  # the caller keeps no frame: only the number that counts is the predictor's
        read_at_first = source.read if read_at_first is None else read_at_first
        keys.append(result[0])
        masks.append(result[2] > predictor.threshold)
        del result
    assert keys == list(range(7))
    assert read_at_first == clip_len  # the first frames come back before the video has been read to the end
    assert source.most_alive == clip_len <= clip_len + overlap
    np.testing.assert_array_equal(np.stack(masks, axis=1),
                                  predictor.segment(video, SENTENCES[:2], clip_len=clip_len, overlap=overlap))


def test_stream_rejects_bad_settings_before_reading(predictor):
    source = CountedFrames(np.zeros((3, 8, 8, 3), dtype=np.uint8))
    for kwargs, message in (({"clip_len": 3, "overlap": 3}, "overlap < clip_len"),
                            ({"clip_len": None, "overlap": 1}, "overlap needs clip_len")):
        with pytest.raises(ValueError, match=message):
            predictor.stream(source, SENTENCES[:1], **kwargs)
    with pytest.raises(ValueError, match="sentence 0 is empty"):
        predictor.stream(source, [" "], clip_len=2)
    assert source.read == 0


def caller() -> str:
    """The innermost file of this repository on the stack (outside it: "outside", e.g. transformers asked)."""
    ours = [frame for frame in traceback.extract_stack() if frame.filename.startswith(str(REPO))
            and not frame.filename.startswith((str(REPO / ".venv"), str(REPO / "tests")))]
    return f"{Path(ours[-1].filename).relative_to(REPO)}" if ours else "outside"


class HostReads(TorchDispatchMode):
    """Records what hands a tensor's value to the host: the operators behind ``.item()``, ``bool()``, ``int()`` and
    boolean masks, and the Tensor methods that copy to the host without reaching the dispatcher (``tolist``,
    ``numpy``, ``cpu``): on a GPU each one waits for the device. Each is attributed to its ``caller()``."""

    OPERATORS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero", "aten.masked_select", "aten.equal")
    METHODS = ("tolist", "numpy", "cpu")

    def __init__(self):
        super().__init__()
        self.callers = []
        self.originals = {name: getattr(torch.Tensor, name) for name in self.METHODS}

    def __enter__(self):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, self.recorded(original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def recorded(self, method):
        def method_recorded(tensor, *args, **kwargs):
            self.callers.append(caller())
            return method(tensor, *args, **kwargs)
        return method_recorded

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in self.OPERATORS:
            self.callers.append(caller())
        return func(*args, **(kwargs or {}))


def test_from_frames_to_upsampled_probabilities_nothing_reads_a_value_on_the_host(predictor, video):
    """The model's forward and the upsampling hand no tensor value to the host (no wait for a GPU between them; the
    probabilities' one copy to the host comes last). The one exception is not ours: transformers' attention-mask
    helper asks ``padding_mask.all()`` when models/text_encoder.py runs RoBERTa with a mask."""
    frames = [Image.fromarray(frame) for frame in video]
    with HostReads() as reads:
        predictor._clip_probabilities(frames, SENTENCES)
    *before, copy_to_host, to_numpy = reads.callers  # the probabilities' .cpu().numpy(), last
    assert copy_to_host == to_numpy == "inference/predictor.py", reads.callers
    assert set(before) <= {"models/text_encoder.py"}, reads.callers
