"""Choose, for each clip, the query slot that best explains its one referred object."""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.clip_targets import ClipTargets
from models.losses import dice_loss, sigmoid_focal_loss
from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class SingleTargetMatcher(nn.Module):
    """Match each clip's single target object to one of the Q query slots, the same slot in every frame.

    A referring expression names exactly one object, so bipartite (Hungarian) matching of DETR reduces to an
    argmin: for every slot q a clip-level cost is computed and the cheapest slot wins. The cost of slot q is

        C_q = w_class * class + w_bbox * L1 + w_giou * (-GIoU) + w_mask * mask_focal + w_dice * dice

    with, for a clip of T frames,

    - class: the focal-style cost alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p)) of the slot's
      probability p in a frame, averaged over the frames where the object is visible ("valid");
    - L1 and -GIoU: between the slot's cxcywh box and the ground-truth box in a frame, averaged over the
      valid frames. The paper's code averages over all frames, comparing predictions with the zero box on
      invalid frames; ``box_cost_on_invalid_frames=True`` restores that;
    - mask focal and dice: between the slot's stride-2 mask logits ``pred_masks_low`` and the ground-truth
      masks subsampled with stride 2 (offset 1), over the whole clip (all T*h*w pixels at once).

    A clip without any valid frame gets zero class and box costs; its mask costs still rank the slots.
    """

    def __init__(self, cost_class: float, cost_bbox: float, cost_giou: float, cost_mask: float,
                 cost_dice: float, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 box_cost_on_invalid_frames: bool = False):
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_cost_on_invalid_frames = box_cost_on_invalid_frames

    @torch.no_grad()
    def forward(self, outputs: dict, targets: ClipTargets) -> torch.Tensor:
        """Return the chosen slot per clip, LongTensor [B] (see ``costs``)."""
        return self.costs(outputs, targets).argmin(dim=-1)

    def costs(self, outputs: dict, targets: ClipTargets) -> torch.Tensor:
        """Cost [B, Q] of every slot of every clip, all clips and frames at once.

        outputs: pred_logits [B, T, Q, 1], pred_boxes [B, T, Q, 4] (normalised cxcywh),
            pred_masks_low [B, T, Q, Hp/2, Wp/2] (logits at stride 2 of the padded size).
        targets: the B clips' boxes [B, T, 4], valid [B, T] and masks [B, T, Hp, Wp].
        """
        logits = outputs["pred_logits"][..., 0].float()  # [B, T, Q]
        boxes = outputs["pred_boxes"].float()  # [B, T, Q, 4]
        masks_low = outputs["pred_masks_low"].float()  # [B, T, Q, h, w]
        valid = targets.valid
        box_frames = torch.ones_like(valid) if self.box_cost_on_invalid_frames else valid

        prob = logits.sigmoid()
        # -log(p) = softplus(-x) and -log(1 - p) = softplus(x), exact for large |x|.
        pos = self.focal_alpha * (1 - prob) ** self.focal_gamma * F.softplus(-logits)
        neg = (1 - self.focal_alpha) * prob ** self.focal_gamma * F.softplus(logits)
        cost_class = mean_over_frames(pos - neg, valid)

        target_boxes = targets.boxes[:, :, None]  # [B, T, 1, 4]
        cost_bbox = mean_over_frames((boxes - target_boxes).abs().sum(-1), box_frames)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))  # [B, T, Q]
        cost_giou = mean_over_frames(-giou, box_frames)

        target_masks = targets.masks_low  # [B, T, h, w]
        if target_masks.shape[-2:] != masks_low.shape[-2:]:
            raise ValueError(
                f"pred_masks_low has spatial size {tuple(masks_low.shape[-2:])} but the ground-truth masks "
                f"{tuple(targets.masks.shape[-2:])} subsample to {tuple(target_masks.shape[-2:])}; the padded "
                "input size must be a multiple of the model's largest stride (data.size_divisibility).")
        pred = rearrange(masks_low, "b t q h w -> b q (t h w)")
        gt = rearrange(target_masks, "b t h w -> b 1 (t h w)")
        cost_mask = sigmoid_focal_loss(pred, gt, self.focal_alpha, self.focal_gamma).mean(-1)
        cost_dice = dice_loss(pred, gt)

        return (self.cost_class * cost_class + self.cost_bbox * cost_bbox + self.cost_giou * cost_giou
                + self.cost_mask * cost_mask + self.cost_dice * cost_dice)


def mean_over_frames(cost: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean of per-frame costs [B, T, Q] over the frames where ``frames`` [B, T] is True -> [B, Q]; 0 for a clip
    with none.

    Selects rather than multiplies, so that a NaN on an excluded frame (e.g. the GIoU of two empty boxes)
    cannot leak in.
    """
    selected = torch.where(frames[..., None], cost, torch.zeros_like(cost))
    return selected.sum(1) / frames.sum(1, keepdim=True).clamp(min=1)


def build_matcher(cfg: dict) -> SingleTargetMatcher:
    """The matcher of a resolved config: weights from ``cfg["matcher"]``; focal parameters and the
    ``boxes_on_invalid_frames`` faithfulness switch (default False) from ``cfg["loss"]``, shared with the criterion.
    """
    costs = cfg["matcher"]
    return SingleTargetMatcher(
        cost_class=costs["cost_class"], cost_bbox=costs["cost_bbox"], cost_giou=costs["cost_giou"],
        cost_mask=costs["cost_mask"], cost_dice=costs["cost_dice"],
        focal_alpha=cfg["loss"]["focal_alpha"], focal_gamma=cfg["loss"]["focal_gamma"],
        box_cost_on_invalid_frames=cfg["loss"]["boxes_on_invalid_frames"])
