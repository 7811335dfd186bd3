"""LoRA on the ModelScope UNet (peft), as HCD's ``main.py`` does it: the attention ``to_q``/``to_v``."""
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from util.errors import UserInputError

LORA_TARGETS = ("to_q", "to_v")


def lora_target_names(unet: nn.Module, skip_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Full names of every attention ``to_q``/``to_v`` in the UNet outside ``skip_prefixes``."""
    return [name for name, _ in unet.named_modules()
            if name.rsplit(".", 1)[-1] in LORA_TARGETS and not name.startswith(skip_prefixes)]


def add_unet_lora(unet: nn.Module, rank: int, alpha: float, dropout: float,
                  skip_prefixes: tuple[str, ...] = ()) -> None:
    """Freeze the UNet's base weights and, for ``rank > 0``, inject trainable LoRA adapters in place.

    The targets are the ``to_q``/``to_v`` projections of every attention (spatial self- and
    cross-attention, temporal attention, ``transformer_in``) except those under ``skip_prefixes``:
    blocks that are never run get no adapter, so that no trainable parameter goes without a gradient
    (DDP requires it). ``lora_B`` starts at zero, so the adapted UNet computes exactly what the
    pretrained one does until it trains. ``rank == 0`` leaves the UNet fully frozen.
    """
    if rank < 0:
        raise UserInputError(f"model.backbone.unet_lora_rank must be >= 0 (0 disables LoRA), got {rank}.")
    unet.requires_grad_(False)
    if rank == 0:
        return
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=lora_target_names(unet, skip_prefixes))
    inject_adapter_in_model(config, unet)
