"""Segment a video from sentences with a trained HCD: the API for notebooks, demos and the inference scripts.

    predictor = Predictor.from_checkpoint("outputs/demo/last.pth", "weight_tiny")
    masks = predictor.segment(frames, ["the red circle", "the square moving left"])  # bool [K, T, H, W]

A video is preprocessed like the evaluation data (short side ``data.test_size``, long side <= ``data.max_size``,
ImageNet normalisation, padding to ``data.size_divisibility``) and run once per clip with all K sentences (or in
chunks of ``captions_per_pass``): the backbone encodes the clip's frames once (VAE latents, CLIP image tokens) and
shares them between the sentences.
For each sentence the model refines the query slot with the best frame-averaged score (``models.hcd.best_query``);
its logits are cropped to the unpadded size, upsampled bilinearly to the original size and passed through a
sigmoid. Long videos go through in consecutive clips of ``clip_len`` frames overlapping by ``overlap`` frames;
where clips overlap, the probabilities are averaged. ``stream`` does the same on an iterator of frames and hands
each frame's probabilities back as soon as they are final, holding at most ``clip_len`` decoded frames: memory
depends on the clip length and the resolution, not on the length of the video.

    for name, frame, probabilities in predictor.stream(named_frames, sentences, clip_len=36, overlap=4):
        ...  # probabilities: float32 [K, H, W] of that frame

``save_pretrained`` / ``from_pretrained`` store the resolved config and the trainable weights only
(``config.yaml`` + ``model.safetensors``); the frozen pretrained components come from the weights folder.
"""
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save
from torch.nn import functional as F

from datasets.transforms_video import make_test_transforms
from datasets.ytvos import normalize_caption
from inference.clips import check_clip
from inference.compilation import compile_heavy_modules
from models import build_model
from models.pretrained import load_pretrained
from util.amp import INFERENCE_AMP, autocast, check_amp
from util.atomic_write import write_folder
from util.checkpoint import PRETRAINED_WEIGHTS_FILE, load_checkpoint, load_model_weights, trainable_state_dict
from util.config import load_config, upgrade_saved_config
from util.errors import UserInputError
from util.nested_tensor import nested_tensor_from_videos

CONFIG_FILE = "config.yaml"


def as_pil_frames(frames) -> list[Image.Image]:
    """A video as a list of RGB PIL images: from PIL images, uint8 arrays ``[H, W, 3]`` or a uint8 array
    ``[T, H, W, 3]``."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UserInputError(f"frames as an array must be uint8 [T, H, W, 3], got {frames.dtype} "
                                 f"{list(frames.shape)}")
    frames = [as_pil_frame(frame) for frame in frames]
    if not frames:
        raise UserInputError("the video has no frames; pass a non-empty list of PIL images or a [T, H, W, 3] array")
    if not all(isinstance(frame, Image.Image) for frame in frames):
        raise UserInputError("frames must be PIL images or a uint8 [T, H, W, 3] array")
    sizes = {frame.size for frame in frames}
    if len(sizes) != 1:
        raise UserInputError(f"all frames of a video must have one size, got (width, height) {sorted(sizes)}")
    return [frame if frame.mode == "RGB" else frame.convert("RGB") for frame in frames]


def as_pil_frame(frame):
    """A uint8 array ``[H, W, 3]`` as a PIL image; anything else as it is (``as_pil_frames`` checks it)."""
    if not isinstance(frame, np.ndarray):
        return frame
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise UserInputError(f"a frame as an array must be uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
    return Image.fromarray(frame)


def check_sentences(sentences: list[str]) -> list[str]:
    """The sentences normalised as in training (lower case, single spaces); ValueError for an empty one."""
    if isinstance(sentences, str):
        raise UserInputError("sentences must be a list of strings; wrap a single sentence in a list")
    if not sentences:
        raise UserInputError("give at least one sentence")
    normalised = []
    for index, sentence in enumerate(sentences):
        if not isinstance(sentence, str) or not sentence.strip():
            raise UserInputError(f"sentence {index} is empty ({sentence!r}); every sentence must describe an object")
        normalised.append(normalize_caption(sentence))
    return normalised


class Predictor:
    """A trained HCD in eval mode with its preprocessing; see the module docstring.

    Args:
        model: the HCD model (``build_model(cfg)[0]``) with its trained weights.
        cfg: the resolved config (reads ``data.test_size``, ``data.max_size``, ``data.size_divisibility`` and
            ``inference.threshold``).
        device: where the model runs.
        amp: "none" or "bf16" (autocast; meant for CUDA).
        captions_per_pass: sentences that go through the caption-dependent part of the model (UNet, transformer,
            heads) together, as one batch of ``captions_per_pass`` x T frames; None: all K at once. Smaller values
            bound the memory of many sentences and, on a CPU, run faster (smaller working sets); the frames are
            encoded once per clip either way.
        compile: ``torch.compile`` the model's heavy modules in place (``inference.compilation``): True for the
            default backend (inductor), or a ``torch.compile`` backend (its name or the callable); the first clip
            then waits for the compilation.
    """

    def __init__(self, model: torch.nn.Module, cfg: dict, device: str | torch.device = "cpu", amp: str = "none",
                 captions_per_pass: int | None = None, compile: bool | str | Callable = False):
        check_amp(amp, INFERENCE_AMP)
        if captions_per_pass is not None and captions_per_pass < 1:
            raise UserInputError(f"captions_per_pass must be None (all at once) or >= 1, got {captions_per_pass}")
        self.captions_per_pass = captions_per_pass
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if compile:
            compile_heavy_modules(self.model, "inductor" if compile is True else compile)
        self.cfg = cfg
        self.amp = amp
        data = cfg["data"]
        self.transforms = make_test_transforms(data["test_size"], data["max_size"])
        self.size_divisibility = data["size_divisibility"]
        self.threshold = cfg["inference"]["threshold"]

    @classmethod
    def from_state(cls, cfg: dict, state: dict[str, torch.Tensor], weights_dir, device="cpu", amp: str = "none",
                   source: str = "the config saved with the checkpoint", compile: bool | str | Callable = False):
        """Build the model of ``cfg`` on the pretrained components of ``weights_dir`` and load ``state`` strictly.
        A config saved before some keys existed gets them with their old behaviour (``upgrade_saved_config``; an
        error names ``source``)."""
        cfg = upgrade_saved_config(cfg, source)
        cfg["weights"] = str(weights_dir)
        model, _ = build_model(cfg, load_pretrained(weights_dir))
        load_model_weights(model, state)
        return cls(model, cfg, device, amp, compile=compile)

    @classmethod
    def from_checkpoint(cls, checkpoint_path, weights_dir, device="cpu", amp: str = "none",
                        compile: bool | str | Callable = False) -> "Predictor":
        """Load a training checkpoint of ``main.py`` (config and trainable weights) on ``weights_dir``."""
        checkpoint = load_checkpoint(checkpoint_path)
        return cls.from_state(checkpoint["config"], checkpoint["model"], weights_dir, device, amp,
                              source=f"the config saved in {checkpoint_path}", compile=compile)

    @classmethod
    def from_pretrained(cls, folder, weights_dir, device="cpu", amp: str = "none",
                        compile: bool | str | Callable = False) -> "Predictor":
        """Load a folder written by ``save_pretrained`` on the pretrained components of ``weights_dir``."""
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; pass the folder written by Predictor.save_pretrained")
        return cls.load(folder, weights_dir, device=device, amp=amp, compile=compile)

    @classmethod
    def load(cls, path, weights_dir=None, cfg: dict | None = None, device="cpu", amp: str = "none",
             compile: bool | str | Callable = False) -> "Predictor":
        """Load a ``main.py`` checkpoint (a ``.pth`` file) or a ``save_pretrained`` folder, whichever ``path`` is.

        cfg: a config to use instead of the stored one (its trainable weights must still match the stored ones);
        weights_dir: the pretrained components, by default the config's ``weights`` folder; compile: as in the
        constructor.
        """
        path = Path(path)
        if path.is_dir():
            for name in (CONFIG_FILE, PRETRAINED_WEIGHTS_FILE):
                if not (path / name).is_file():
                    raise FileNotFoundError(f"{path / name} is missing: {path} must be a folder written by "
                                            f"Predictor.save_pretrained ({CONFIG_FILE} + {PRETRAINED_WEIGHTS_FILE})")
            stored_cfg, state = load_config(path / CONFIG_FILE), load_file(path / PRETRAINED_WEIGHTS_FILE)
        else:
            checkpoint = load_checkpoint(path)
            stored_cfg, state = checkpoint["config"], checkpoint["model"]
        source = f"the config saved in {path}" if cfg is None else "the config given instead of the stored one"
        cfg = stored_cfg if cfg is None else cfg
        return cls.from_state(cfg, state, cfg["weights"] if weights_dir is None else weights_dir, device, amp, source,
                              compile)

    def save_pretrained(self, folder) -> Path:
        """Write ``folder/config.yaml`` (resolved config) and ``folder/model.safetensors`` (trainable weights).

        ``folder`` is replaced as a whole (``util.atomic_write.write_folder``): it is always either the old one or
        the complete new one. Returns ``folder``.
        """
        folder = Path(folder)
        write_folder(folder, {
            CONFIG_FILE: yaml.safe_dump(self.cfg, sort_keys=False).encode(),
            PRETRAINED_WEIGHTS_FILE: save(trainable_state_dict(self.model)),
        })
        return folder

    def probabilities(self, frames, sentences: list[str], clip_len: int | None = None, overlap: int = 0) -> np.ndarray:
        """Per-pixel probabilities of each sentence's object: float32 ``[K, T, H, W]`` at the original size.

        frames: the T frames of one video (PIL images or a uint8 ``[T, H, W, 3]`` array); sentences: K strings.
        clip_len: frames per forward pass (None: the whole video at once); overlap: frames shared by
        consecutive clips, whose probabilities are averaged.
        """
        results = self.stream(enumerate(as_pil_frames(frames)), sentences, clip_len, overlap)
        return np.stack([probabilities for _, _, probabilities in results], axis=1)

    def stream(self, frames: Iterable[tuple], sentences: list[str], clip_len: int | None = None,
               overlap: int = 0) -> Iterator[tuple]:
        """``(key, frame, probabilities float32 [K, H, W])`` for each ``(key, frame)`` of ``frames``, in order, as
        soon as the frame's probabilities are final.

        frames: an iterable (typically a lazy decoder) of pairs of any key (a frame name, an index) and a frame (a
        PIL image or uint8 ``[H, W, 3]``), all of one size. The numbers are those of ``probabilities`` on the whole
        list: clips of ``clip_len`` frames (None: all frames in one clip, which then are all held) starting
        ``clip_len - overlap`` frames apart, the frames shared by clips averaged. At most ``clip_len`` frames are
        held at a time: ``frames`` is read ``clip_len - overlap`` frames ahead of what has been handed back.
        Invalid sentences or clip settings raise ValueError here, before any frame is read.
        """
        sentences = check_sentences(sentences)
        check_clip(clip_len, overlap)
        return self._stream(iter(frames), sentences, clip_len, overlap)

    def _stream(self, frames: Iterator[tuple], sentences: list[str], clip_len: int | None,
                overlap: int) -> Iterator[tuple]:
        step = None if clip_len is None else clip_len - overlap
        window = list(islice(frames, clip_len))
        carried_sum = carried_count = None  # [K, n, H, W] and [n]: the window's first n frames, seen by earlier clips
        while window:
            total = self._clip_probabilities(as_pil_frames([frame for _, frame in window]), sentences)  # [K, t, H, W]
            count = np.ones(len(window), dtype=np.float32)
            if carried_sum is not None:
                total[:, :len(carried_count)] += carried_sum
                count[:len(carried_count)] += carried_count
            # A full window may be followed by more frames: its last `overlap` frames wait for the next clip.
            full = step is not None and len(window) == clip_len
            done = step if full else len(window)
            for index in range(done):  # no local keeps a frame once it is handed back
                yield *window[index], total[:, index] / count[index]
            carried_sum, carried_count = total[:, done:], count[done:]
            window = window[done:]  # dropped before reading on, so that at most clip_len frames are held
            if full:
                window.extend(islice(frames, step))
            if len(window) == len(carried_count):  # nothing new: the video ended with the last clip
                for index, (key, frame) in enumerate(window):
                    yield key, frame, carried_sum[:, index] / carried_count[index]
                return

    def segment(self, frames, sentences: list[str], clip_len: int | None = None, overlap: int = 0,
                threshold: float | None = None) -> np.ndarray:
        """Binary masks bool ``[K, T, H, W]``: probabilities above ``threshold`` (default
        ``inference.threshold`` of the config)."""
        threshold = self.threshold if threshold is None else threshold
        return self.probabilities(frames, sentences, clip_len, overlap) > threshold

    @torch.inference_mode()
    def _clip_probabilities(self, frames: list[Image.Image], sentences: list[str]) -> np.ndarray:
        """One clip with all K sentences (in chunks of ``captions_per_pass``) -> float32 ``[K, t, H, W]`` at the
        original size."""
        width, height = frames[0].size
        video, _ = self.transforms(frames, {}, random.Random(0))  # [t, 3, h, w]; the test transforms draw nothing
        resized_h, resized_w = video.shape[-2:]
        # The frames go in at the model's own precision: float32, or float64 for a model converted by .double().
        dtype = getattr(self.model, "dtype", torch.float32)
        samples = nested_tensor_from_videos([video.to(dtype)], self.size_divisibility).to(self.device)
        step = self.captions_per_pass or len(sentences)
        chunks = [sentences[start:start + step] for start in range(0, len(sentences), step)]
        # Several chunks: the backbone encodes the clip's frames once for all of them.
        reuse = self.model.backbone.reusing_frames() if len(chunks) > 1 else nullcontext()
        with autocast(self.device, self.amp, INFERENCE_AMP), reuse:
            logits = torch.cat([self.model(samples, chunk)["pred_masks"] for chunk in chunks])
        # float32 from bf16 autocast; float64 stays float64 up to the returned float32 probabilities.
        logits = logits[:, :, :resized_h, :resized_w]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # [K, t, h, w]
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits.sigmoid().float().cpu().numpy()

