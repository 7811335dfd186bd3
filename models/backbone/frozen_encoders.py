"""The frozen pretrained encoders of the backbone: VAE (latents), CLIP vision (image tokens), CLIP text.

They never train: their weights have ``requires_grad=False``, they stay in eval mode whatever
``train()`` asks, and they run under ``torch.no_grad``. They may hold their weights in a lower
precision (``frozen_dtype``, e.g. bf16 on GPU); their outputs are returned in fp32 (fp64 when the weights are fp64,
so that a whole model converted with ``.double()`` computes in fp64).
"""
import torch
import torch.nn.functional as F
from torch import nn

from util.errors import UserInputError
from util.host_to_device import to_device
from util.imagenet import IMAGENET_MEAN, IMAGENET_STD  # the normalisation the frames arrive in

# Both the OpenAI CLIP and the laion CLIP-H preprocessors use these constants.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _channel_vector(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(3, 1, 1)


def at_least_float32(features: torch.Tensor) -> torch.Tensor:
    """``features`` in fp32 when held in a lower precision, unchanged in fp32 or fp64."""
    return features.to(torch.promote_types(features.dtype, torch.float32))


def imagenet_to_unit(frames: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: [..., 3, H, W] normalised -> [0, 1] (padding becomes the mean colour)."""
    return frames * _channel_vector(IMAGENET_STD, frames) + _channel_vector(IMAGENET_MEAN, frames)


def clip_pixel_values(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP preprocessing on the tensor's device, as the CLIP image processor does it on the CPU.

    The shorter side is resized to ``size`` (bicubic, antialiased), the centre ``size``×``size`` crop
    is kept and the CLIP mean/std normalisation applied.

    images: [N, 3, H, W] in [0, 1]  ->  [N, 3, size, size]
    """
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    resized_hw = (max(size, round(height * scale)), max(size, round(width * scale)))
    images = F.interpolate(images, size=resized_hw, mode="bicubic", antialias=True, align_corners=False)
    top = (resized_hw[0] - size) // 2
    left = (resized_hw[1] - size) // 2
    images = images[..., top:top + size, left:left + size].clamp(0.0, 1.0)
    return (images - _channel_vector(CLIP_MEAN, images)) / _channel_vector(CLIP_STD, images)


class FrozenEncoders(nn.Module):
    """VAE + CLIP vision + CLIP text (+ the CLIP tokenizer), frozen.

    Args:
        vae: diffusers ``AutoencoderKL`` (SD-style, /8).
        clip_vision: transformers ``CLIPVisionModel(WithProjection)``; its ``last_hidden_state`` is used.
        clip_text: transformers ``CLIPTextModel`` (the ModelScope text encoder).
        clip_tokenizer: the CLIP tokenizer matching ``clip_text``.
        clip_image_size: side of the square CLIP input; must equal ``clip_vision.config.image_size``.
        sample_posterior: sample the VAE posterior (the paper's code) instead of taking its mean.
        frozen_dtype: dtype in which the three encoders hold their weights and compute.
    """

    def __init__(self, vae: nn.Module, clip_vision: nn.Module, clip_text: nn.Module, clip_tokenizer,
                 clip_image_size: int, sample_posterior: bool = False, frozen_dtype: torch.dtype = torch.float32):
        super().__init__()
        expected_size = clip_vision.config.image_size
        if clip_image_size != expected_size:
            raise UserInputError(
                f"model.backbone.clip_image_size is {clip_image_size} but the CLIP vision model was trained at "
                f"{expected_size}×{expected_size}; set clip_image_size: {expected_size} in the config.")
        self.vae = vae
        self.clip_vision = clip_vision
        self.clip_text = clip_text
        self.clip_tokenizer = clip_tokenizer
        self.clip_image_size = clip_image_size
        self.sample_posterior = sample_posterior
        self.text_length = clip_text.config.max_position_embeddings
        self.latent_scale = vae.config.scaling_factor
        for module in (self.vae, self.clip_vision, self.clip_text):
            module.requires_grad_(False)
            if next(module.parameters()).dtype != frozen_dtype:
                module.to(dtype=frozen_dtype)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoders":
        """Frozen encoders stay in eval mode (no dropout, fixed statistics) whatever ``mode`` is."""
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """VAE latents at timestep 0 (no noise).

        frames: [N, 3, H, W] in [0, 1]  ->  [N, 4, H/8, W/8] = posterior mean (or sample) × scaling factor
        """
        posterior = self.vae.encode((frames * 2.0 - 1.0).to(self.dtype)).latent_dist
        latents = posterior.sample() if self.sample_posterior else posterior.mean
        return at_least_float32(latents * self.latent_scale)

    @torch.no_grad()
    def encode_images(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP image tokens (before the projection head).

        frames: [N, 3, H, W] in [0, 1]  ->  [N, N_img, Dv]  (257 × 1280 for CLIP-H at 224)
        """
        pixels = clip_pixel_values(frames, self.clip_image_size).to(self.dtype)
        return at_least_float32(self.clip_vision.vision_model(pixel_values=pixels).last_hidden_state)

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """CLIP text tokens of each caption, padded/truncated to the text model's length (77).

        captions: list of N strings  ->  [N, 77, Dc]
        """
        tokens = self.clip_tokenizer(captions, padding="max_length", max_length=self.text_length,
                                     truncation=True, return_tensors="pt")
        device = next(self.clip_text.parameters()).device
        return at_least_float32(self.clip_text(input_ids=to_device(tokens.input_ids, device)).last_hidden_state)
