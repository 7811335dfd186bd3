"""HCD's visual backbone: noise-free ModelScope T2V UNet features, per-frame CLIP condition, TCMR stride-4 map.

Data flow for B clips × T frames (padded H×W) and K captions per clip:

    frames (ImageNet-normalised) -> [0, 1]
      ├─ frozen VAE: posterior mean × scaling factor      -> latents      [B, 4, T, H/8, W/8]
      ├─ frozen CLIP vision (on-device resize/normalise)  -> image tokens [B·T, N_img, Dv]
      └─ trainable TemporalStem                           -> stride4      [B·T, c, H/4, W/4]
    captions -> frozen CLIP text (once per caption)       -> [B·K, 77, Dc], repeated over T
    FrameCondition(text, ResidualMLP(image tokens))       -> condition    [B·K·T, 77, Dc]
    UNet (LoRA) at t = 0 on the latents                   -> taps f0..f5
    PairProjection                                        -> features at /8, /16, /32

``encode_frames`` does the caption-independent frozen work once per clip; ``extract`` then serves any
number of captions per clip, so several expressions of one video share the VAE and CLIP-vision passes. Inside
``reusing_frames()`` that sharing also spans calls: several forward passes over the same clip, each with a chunk
of its captions, encode the frames once.
"""
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from util.errors import UserInputError

from .frame_condition import FrameCondition
from .frozen_encoders import FrozenEncoders, imagenet_to_unit
from .lora import add_unet_lora
from .pair_projection import PairProjection
from .temporal_stem import TemporalStem
from .unet_features import UNUSED_PREFIXES, UNetFeatureExtractor

FROZEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FrameEncoding:
    """The caption-independent, frozen encoding of B clips.

    frames:       [B, T, 3, H, W] in [0, 1]
    mask:         [B, T, H, W] bool, True = padding
    latents:      [B, 4, T, H/8, W/8] VAE latents × scaling factor
    image_tokens: [B·T, N_img, Dv] CLIP vision ``last_hidden_state``
    """
    frames: torch.Tensor
    mask: torch.Tensor
    latents: torch.Tensor
    image_tokens: torch.Tensor


@dataclass
class BackboneOutput:
    """Backbone features for N = B·K·T frames, in (b k t) order (K captions per clip).

    features:     3 maps [N, C_l, H/s, W/s] for s = 8, 16, 32 (C_l = ``num_channels``)
    masks:        3 masks [N, H/s, W/s] bool, True = padding
    stride4:      [N, c, H/4, W/4] TCMR stride-4 feature (c = ``stride4_channels``)
    stride4_mask: [N, H/4, W/4] bool, True = padding
    """
    features: list[torch.Tensor]
    masks: list[torch.Tensor]
    stride4: torch.Tensor
    stride4_mask: torch.Tensor


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a padding mask: [N, H, W] bool -> [N, *size] bool."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].bool()


class VisualBackbone(nn.Module):
    """The whole visual backbone of HCD (see the module docstring).

    Args:
        unet: diffusers ``UNet3DConditionModel`` (ModelScope layout). Its base weights are frozen and,
            for ``lora_rank > 0``, LoRA adapters are injected into it in place.
        vae, clip_vision, clip_text, clip_tokenizer: the frozen pretrained encoders (see ``FrozenEncoders``).
        out_channels: channels of the three output levels, strides 8, 16, 32 ([256, 512, 1024]).
        tcmr_channels: channels of the stride-4 TCMR feature (128).
        lora_rank, lora_alpha, lora_dropout: LoRA on the UNet's ``to_q``/``to_v``; rank 0 freezes the UNet.
        clip_image_size: CLIP input side; must match ``clip_vision.config.image_size``.
        sample_posterior: sample the VAE posterior (the paper's code) instead of taking its mean.
        gradient_checkpointing: recompute the UNet blocks in the backward pass to save memory.
        frozen_dtype: dtype of the frozen VAE/CLIP weights (bf16 saves memory on GPU).
    """

    strides = (8, 16, 32)

    def __init__(self, unet: nn.Module, vae: nn.Module, clip_vision: nn.Module, clip_text: nn.Module,
                 clip_tokenizer, out_channels: list[int], tcmr_channels: int, lora_rank: int,
                 lora_alpha: float, lora_dropout: float, clip_image_size: int, sample_posterior: bool = False,
                 gradient_checkpointing: bool = False, frozen_dtype: torch.dtype = torch.float32):
        super().__init__()
        condition_dim = unet.config.cross_attention_dim
        if clip_text.config.hidden_size != condition_dim:
            raise UserInputError(
                f"The CLIP text encoder's width ({clip_text.config.hidden_size}) differs from the UNet's "
                f"cross_attention_dim ({condition_dim}); weight/text_encoder and weight/unet do not belong together.")
        self.frozen = FrozenEncoders(vae, clip_vision, clip_text, clip_tokenizer, clip_image_size,
                                     sample_posterior=sample_posterior, frozen_dtype=frozen_dtype)
        add_unet_lora(unet, lora_rank, lora_alpha, lora_dropout, skip_prefixes=UNUSED_PREFIXES)
        self.unet_features = UNetFeatureExtractor(unet, gradient_checkpointing=gradient_checkpointing)
        self.frame_condition = FrameCondition(clip_vision.config.hidden_size, condition_dim)
        self.projection = PairProjection(self.unet_features.tap_channels, list(out_channels))
        self.temporal_stem = TemporalStem(tcmr_channels)
        self.num_channels = list(out_channels)
        self.stride4_channels = tcmr_channels
        self._reuse: list | None = None  # inside reusing_frames(): [] or [(samples, FrameEncoding, {stems})]

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> FrameEncoding:
        """Frozen, caption-independent work: VAE latents and CLIP image tokens.

        frames: [B, T, 3, H, W] ImageNet-normalised; mask: [B, T, H, W] bool, True = padding.
        """
        num_frames = frames.shape[1]
        frames = imagenet_to_unit(frames)
        flat = rearrange(frames, "b t c h w -> (b t) c h w")
        latents = rearrange(self.frozen.encode_latents(flat), "(b t) c h w -> b c t h w", t=num_frames)
        return FrameEncoding(frames=frames, mask=mask, latents=latents,
                             image_tokens=self.frozen.encode_images(flat))

    def extract(self, encoding: FrameEncoding, captions: list[str]) -> BackboneOutput:
        """Features of B encoded clips for K captions each.

        captions: B·K strings grouped by clip (captions[b·K + k] is the k-th caption of clip b).
        The output batch is N = B·K·T frames in (b k t) order.
        """
        clips, num_frames = encoding.frames.shape[:2]
        if not captions or len(captions) % clips != 0:
            raise ValueError(f"Got {len(captions)} captions for {clips} clips; give each clip the same number "
                             "(at least one) of captions, grouped by clip.")
        per_clip = len(captions) // clips

        text = repeat(self.frozen.encode_text(captions), "n l d -> (n t) l d", t=num_frames)
        images = self.frame_condition.project_images(encoding.image_tokens)
        images = repeat(images, "(b t) n d -> (b k t) n d", t=num_frames, k=per_clip)
        condition = self.frame_condition(text, images)  # [B·K·T, 77, Dc]

        unet_stem = self._once_per_clip(encoding, "unet", lambda: self.unet_features.stem(encoding.latents))
        features = self.projection(self.unet_features(encoding.latents, condition, unet_stem))

        stride4 = self._once_per_clip(encoding, "stride4",
                                      lambda: self.temporal_stem(encoding.frames))  # [B·T, c, H/4, W/4]
        stride4 = repeat(stride4, "(b t) c h w -> (b k t) c h w", t=num_frames, k=per_clip)
        mask = repeat(encoding.mask, "b t h w -> (b k t) h w", k=per_clip)
        return BackboneOutput(
            features=features,
            masks=[resize_mask(mask, feature.shape[-2:]) for feature in features],
            stride4=stride4,
            stride4_mask=resize_mask(mask, stride4.shape[-2:]),
        )

    def forward(self, samples, captions: list[str]) -> BackboneOutput:
        """samples: NestedTensor-like with ``tensors`` [B, T, 3, H, W] (ImageNet-normalised) and ``mask``
        [B, T, H, W] (True = padding); captions: B·K strings grouped by clip (usually K = 1)."""
        if self._reuse is None:
            return self.extract(self.encode_frames(samples.tensors, samples.mask), captions)
        if not self._reuse or self._reuse[0][0] is not samples:
            self._reuse[:] = [(samples, self.encode_frames(samples.tensors, samples.mask), {})]
        return self.extract(self._reuse[0][1], captions)

    def _once_per_clip(self, encoding: FrameEncoding, name: str, compute):
        """``compute()``, a caption-independent feature of ``encoding``; inside ``reusing_frames()`` it is kept
        with the reused encoding, so that later chunks of the clip's captions do not recompute it."""
        if not self._reuse or self._reuse[0][1] is not encoding:
            return compute()
        kept = self._reuse[0][2]
        if name not in kept:
            kept[name] = compute()
        return kept[name]

    @contextmanager
    def reusing_frames(self) -> Iterator[None]:
        """Within the block, ``forward`` keeps the last clip's ``encode_frames`` result and reuses it while the
        same ``samples`` object comes back (compared by identity), so that calls with chunks of one clip's captions
        share the frozen VAE and CLIP-vision work, the UNet's stem and the TCMR stride-4 feature (the latter two
        are trainable: meant for inference). Everything kept is dropped on exit."""
        self._reuse = []
        try:
            yield
        finally:
            self._reuse = None


def build_backbone(cfg: Mapping, components) -> VisualBackbone:
    """Wire ``cfg["model"]["backbone"]`` to a ``VisualBackbone`` over loaded pretrained components.

    components: ``models.pretrained.PretrainedComponents`` (uses unet, vae, clip_vision, clip_text,
    clip_tokenizer). ``model.backbone.frozen_dtype``: "float32", or "bfloat16" / "float16" to hold the frozen
    encoders in half precision on GPU.
    """
    options = cfg["model"]["backbone"]
    dtype_name = options["frozen_dtype"]
    if dtype_name not in FROZEN_DTYPES:
        raise UserInputError(f"model.backbone.frozen_dtype must be one of {sorted(FROZEN_DTYPES)}, got {dtype_name!r}.")
    return VisualBackbone(
        unet=components.unet,
        vae=components.vae,
        clip_vision=components.clip_vision,
        clip_text=components.clip_text,
        clip_tokenizer=components.clip_tokenizer,
        out_channels=list(options["out_channels"]),
        tcmr_channels=options["tcmr_channels"],
        lora_rank=options["unet_lora_rank"],
        lora_alpha=options["unet_lora_alpha"],
        lora_dropout=options["unet_lora_dropout"],
        clip_image_size=options["clip_image_size"],
        sample_posterior=options["sample_posterior"],
        gradient_checkpointing=options["gradient_checkpointing"],
        frozen_dtype=FROZEN_DTYPES[dtype_name],
    )
