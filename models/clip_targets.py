"""The targets of a batch of clips as batch tensors: the model stacks them once for its matcher (every decoder layer),
the criterion once for every layer's losses."""
from dataclasses import dataclass

import torch

from models.losses import subsample_stride2


@dataclass(frozen=True)
class ClipTargets:
    """One referred object per clip, B clips of T frames.

    boxes: [B, T, 4] normalised cxcywh (the zero box where the object is absent).
    valid: [B, T] bool, True where the object is visible.
    masks: [B, T, Hp, Wp] float in {0, 1}, at the padded input size.
    """
    boxes: torch.Tensor
    valid: torch.Tensor
    masks: torch.Tensor

    @property
    def masks_low(self) -> torch.Tensor:
        """The masks at the resolution of the stride-2 "low" masks: [B, T, Hp/2, Wp/2] (a view, no copy)."""
        return subsample_stride2(self.masks)


def stack_targets(targets: list[dict], device: torch.device) -> ClipTargets:
    """B target dicts (boxes [T, 4], valid [T], masks [T, Hp, Wp], as ``util.nested_tensor.collate_clips`` gives
    them) -> ``ClipTargets`` on ``device``: one stack per entry, then one copy to the device."""
    def stacked(key: str) -> torch.Tensor:
        return torch.stack([target[key] for target in targets]).to(device, non_blocking=True)

    return ClipTargets(boxes=stacked("boxes").float(), valid=stacked("valid").bool(), masks=stacked("masks").float())
