"""Six feature maps from the ModelScope text-to-video UNet, conditioned per frame, at timestep 0.

Our forward walks the blocks of a diffusers ``UNet3DConditionModel`` instead of calling its
``forward``, for two reasons: the stock forward repeats one condition per video over the frames
(``repeat_interleave``), whereas HCD's condition differs per frame; and only six intermediate maps
are wanted, so the last up block and ``conv_out`` are never computed.

The blocks take the frames folded into the batch, ``(b t)`` order, and ``encoder_hidden_states``
with the same leading ``B·T`` axis: that is where the per-frame condition goes in directly. With K
captions per clip the batch becomes ``(b k t)``; ``conv_in`` and ``transformer_in`` do not see the
condition, so they run once per clip and the K captions share their output.
"""
import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from util.errors import UserInputError

# Parts of the UNet that the taps do not need and that are never run.
UNUSED_PREFIXES = ("up_blocks.3.", "conv_norm_out", "conv_out")


def tap_channels(block_out_channels: tuple[int, ...]) -> list[int]:
    """Channels of f0..f5 for a ModelScope-layout UNet: (320, 320, 640, 1280, 1280, 640) at full size."""
    up = list(reversed(block_out_channels))
    return [block_out_channels[0], block_out_channels[0], block_out_channels[1], up[0], up[1], up[2]]


class UNetFeatureExtractor(nn.Module):
    """Runs a ``UNet3DConditionModel`` on clean latents at t = 0 with a per-frame condition.

    Args:
        unet: the (LoRA-adapted or frozen) diffusers ``UNet3DConditionModel`` with four down and four up
            blocks, the ModelScope layout.
        gradient_checkpointing: recompute each down/mid/up block in the backward pass
            (``torch.utils.checkpoint``) instead of storing its activations.
    """

    def __init__(self, unet: nn.Module, gradient_checkpointing: bool = False):
        super().__init__()
        block_out_channels = tuple(unet.config.block_out_channels)
        if len(block_out_channels) != 4 or len(unet.up_blocks) != 4:
            raise UserInputError(
                "The UNet must have the ModelScope layout (4 down and 4 up blocks) for the six HCD taps; got "
                f"block_out_channels={list(block_out_channels)}. Check weight/unet/config.json.")
        self.unet = unet
        self.gradient_checkpointing = gradient_checkpointing
        self.tap_channels = tap_channels(block_out_channels)

    def _run(self, block: nn.Module, *args, **kwargs):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    def _time_embedding(self, batch: int, device: torch.device) -> torch.Tensor:
        """Embedding of timestep 0, the same for every frame: [batch, 4·C0]."""
        timestep = torch.zeros(1, device=device)
        t_emb = self.unet.time_proj(timestep).to(dtype=self.unet.dtype)
        return self.unet.time_embedding(t_emb).expand(batch, -1)

    def stem(self, latents: torch.Tensor) -> torch.Tensor:
        """The caption-independent ``conv_in`` + ``transformer_in``: latents [B, 4, T, h, w] -> [B·T, C0, h, w]."""
        unet = self.unet
        sample = unet.conv_in(rearrange(latents, "b c t h w -> (b t) c h w").to(unet.dtype))
        return unet.transformer_in(sample, num_frames=latents.shape[2], return_dict=False)[0]

    def forward(self, latents: torch.Tensor, condition: torch.Tensor,
                stem: torch.Tensor | None = None) -> list[torch.Tensor]:
        """
        latents: [B, 4, T, h, w] (h, w = H/8, W/8); condition: [B·K·T, L, Dc] in (b k t) order, K >= 1
        captions per clip; stem: ``self.stem(latents)`` when the caller already has it.

        Returns f0..f5, each [B·K·T, C_i, h_i, w_i]:
            f0 after conv_in + transformer_in  C0  /8
            f1 after down block 0              C0  /16
            f2 after down block 1              C1  /32
            f3 after up block 0                C3  /32
            f4 after up block 1                C2  /16
            f5 after up block 2                C1  /8
        Up blocks upsample to the exact size of their skip connection, so paired taps share a size
        even for odd latent sizes.
        """
        unet = self.unet
        clips, num_frames = latents.shape[0], latents.shape[2]
        if condition.shape[0] == 0 or condition.shape[0] % (clips * num_frames) != 0:
            raise ValueError(f"condition has {condition.shape[0]} rows, expected a multiple B·K·T of "
                             f"B·T = {clips * num_frames}.")
        per_clip = condition.shape[0] // (clips * num_frames)
        frames_kwargs = {"num_frames": num_frames}
        text_kwargs = {"encoder_hidden_states": condition, "num_frames": num_frames}

        sample = self.stem(latents) if stem is None else stem
        sample = repeat(sample, "(b t) c h w -> (b k t) c h w", t=num_frames, k=per_clip)
        emb = self._time_embedding(sample.shape[0], sample.device)
        taps = [sample]
        skips = (sample,)
        for index, block in enumerate(unet.down_blocks):
            kwargs = text_kwargs if getattr(block, "has_cross_attention", False) else frames_kwargs
            sample, block_skips = self._run(block, sample, emb, **kwargs)
            skips += block_skips
            if index < 2:
                taps.append(sample)

        sample = self._run(unet.mid_block, sample, emb, **text_kwargs)

        for block in unet.up_blocks[:3]:
            block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            kwargs = text_kwargs if getattr(block, "has_cross_attention", False) else frames_kwargs
            sample = self._run(block, sample, block_skips, emb, upsample_size=skips[-1].shape[2:], **kwargs)
            taps.append(sample)
        return taps
