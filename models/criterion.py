"""Training losses of HCD for the slot the model selected, on every decoder layer."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models.clip_targets import ClipTargets, stack_targets
from models.losses import dice_loss, sigmoid_focal_loss
from models.matcher import SingleTargetMatcher, build_matcher
from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

# Loss name -> key of cfg["loss"] holding its weight. Mask and dice weights apply at both resolutions.
LOSS_WEIGHT_KEYS = {
    "loss_ce": "cls",
    "loss_bbox": "bbox",
    "loss_giou": "giou",
    "loss_mask": "mask",
    "loss_dice": "dice",
    "loss_mask_low": "mask",
    "loss_dice_low": "dice",
}


class SetCriterion(nn.Module):
    """Unweighted losses of one forward pass; ``weight_dict`` says how the engine weights them.

    The match is not recomputed here: in training the model calls ``criterion.matcher`` itself (it must know
    the slot before refining its mask at full resolution) and reports it as ``outputs["selected_query"]``.

    Every loss is a sum over the batch divided by ``num_boxes``, the number of frames in which the target is
    visible (averaged over processes, at least 1), as in ReferFormer:

    - loss_ce: sigmoid focal loss over all T*Q logits; the target is 1 for the selected slot on valid frames.
    - loss_bbox / loss_giou: L1 (summed over cx, cy, w, h) and 1 - GIoU of the selected slot's box on valid
      frames (on all frames, against the zero box, with ``box_loss_on_invalid_frames=True`` as in the paper).
    - loss_mask / loss_dice: focal loss (mean over pixels) and dice of the full-resolution refined mask
      ``pred_masks`` against the padded ground truth, over the whole clip (T*H*W pixels at once).
    - loss_mask_low / loss_dice_low: the same for the selected slot's stride-2 ``pred_masks_low`` against the
      ground truth subsampled with stride 2 (offset 1).

    The losses of ``outputs["aux_outputs"][i]`` (earlier decoder layers, each with its own selected slot and
    refined mask) get the suffix ``_i``.

    With ``outputs["pred_referring"]`` (``model.pixel_referring``), two more, of the text-to-pixel logits against
    the ground truth area-averaged to their stride-8 grid: loss_pixel_referring (binary cross-entropy, mean over a
    clip's pixels) and loss_pixel_referring_dice, summed over clips and divided by ``num_boxes`` like the rest.
    """

    def __init__(self, matcher: SingleTargetMatcher, weight_dict: dict[str, float], focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, box_loss_on_invalid_frames: bool = False):
        super().__init__()
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_loss_on_invalid_frames = box_loss_on_invalid_frames

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Losses (scalar tensors) by name.

        outputs: pred_logits [B, T, Q, 1], pred_boxes [B, T, Q, 4] (normalised cxcywh), pred_masks_low
            [B, T, Q, Hp/2, Wp/2] and pred_masks [B, T, Hp, Wp] (logits; the latter of the selected slot only),
            selected_query long [B], and optionally aux_outputs: a list of dicts with the same keys.
        targets: B dicts with boxes [T, 4] (normalised cxcywh), valid [T], masks [T, Hp, Wp] (padded size); stacked
            once here for every layer.
        """
        stacked = stack_targets(targets, outputs["pred_logits"].device)
        num_boxes = count_valid_frames(stacked.valid)
        losses = self.layer_losses(outputs, stacked, num_boxes)
        if "pred_referring" in outputs:
            losses.update(self.pixel_referring_losses(outputs["pred_referring"], stacked.masks, num_boxes))
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self.layer_losses(aux_outputs, stacked, num_boxes)
            losses.update({f"{name}_{i}": value for name, value in aux_losses.items()})
        return losses

    def layer_losses(self, outputs: dict, targets: ClipTargets,
                     num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """The seven losses of one decoder layer's outputs, all clips and frames at once."""
        logits = outputs["pred_logits"].float()  # [B, T, Q, 1]
        selected = outputs["selected_query"]  # [B]
        batch = torch.arange(logits.shape[0], device=logits.device)
        valid = targets.valid  # [B, T]

        is_target = F.one_hot(selected, logits.shape[2]).bool()[:, None, :] & valid[:, :, None]  # [B, T, Q]
        loss_ce = sigmoid_focal_loss(logits, is_target[..., None], self.focal_alpha, self.focal_gamma).sum()

        box_frames = torch.ones_like(valid) if self.box_loss_on_invalid_frames else valid
        # Frames left out compare a stand-in box, cxcywh (0.5, 0.5, 0.5, 0.5), with itself (L1 0, GIoU exactly 1)
        # rather than being indexed away: boolean indexing would wait for the device to count them, and their own
        # boxes may be empty, whose NaN GIoU would reach the gradients even under a zero weight.
        keep = box_frames[..., None]  # [B, T, 1]
        boxes = torch.where(keep, outputs["pred_boxes"].float()[batch, :, selected], 0.5)  # [B, T, 4]
        target_boxes = torch.where(keep, targets.boxes, 0.5)
        loss_bbox = (boxes - target_boxes).abs().sum()
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))  # [B, T]
        loss_giou = (1 - giou).sum()

        loss_mask, loss_dice = self.mask_losses(outputs["pred_masks"], targets.masks, "pred_masks")
        masks_low = outputs["pred_masks_low"][batch, :, selected]  # [B, T, Hp/2, Wp/2]
        loss_mask_low, loss_dice_low = self.mask_losses(masks_low, targets.masks_low, "pred_masks_low")

        losses = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "loss_mask": loss_mask,
                  "loss_dice": loss_dice, "loss_mask_low": loss_mask_low, "loss_dice_low": loss_dice_low}
        return {name: value / num_boxes for name, value in losses.items()}

    def pixel_referring_losses(self, logits: torch.Tensor, target_masks: torch.Tensor,
                               num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """BCE and dice of text-to-pixel logits [B, T, h, w] against the area-averaged padded ground truth
        target_masks [B, T, Hp, Wp]."""
        soft = F.adaptive_avg_pool2d(target_masks, logits.shape[-2:])  # [B, T, h, w], fraction covered
        logits, soft = logits.float().flatten(1), soft.flatten(1)
        bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").mean(1).sum()
        return {"loss_pixel_referring": bce / num_boxes,
                "loss_pixel_referring_dice": dice_loss(logits, soft).sum() / num_boxes}

    def mask_losses(self, pred: torch.Tensor, target: torch.Tensor,
                    name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Focal (mean over a clip's pixels) and dice, each summed over clips: pred/target [B, T, h, w]."""
        if pred.shape != target.shape:
            raise ValueError(f"{name} has shape {tuple(pred.shape)} but the ground-truth masks give "
                             f"{tuple(target.shape)}; the padded input size must be a multiple of the model's "
                             "largest stride (data.size_divisibility).")
        pred, target = pred.float().flatten(1), target.flatten(1)  # [B, T*h*w]
        focal = sigmoid_focal_loss(pred, target, self.focal_alpha, self.focal_gamma).mean(1).sum()
        return focal, dice_loss(pred, target).sum()


def count_valid_frames(valid: torch.Tensor) -> torch.Tensor:
    """Valid frames of valid [B, T], averaged over the processes of a distributed run, at least 1: a 0-d float
    tensor on valid's device (no wait for the device)."""
    count = valid.sum().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1)


def build_weight_dict(loss_cfg: dict, num_aux_layers: int, pixel_referring: bool = False) -> dict[str, float]:
    """Weight of every loss name, the final layer's and those of ``num_aux_layers`` earlier layers; with
    ``pixel_referring``, also of the text-to-pixel losses (``loss.pixel_referring`` and
    ``loss.pixel_referring_dice``)."""
    weights = {name: float(loss_cfg[key]) for name, key in LOSS_WEIGHT_KEYS.items()}
    for i in range(num_aux_layers):
        weights.update({f"{name}_{i}": float(loss_cfg[key]) for name, key in LOSS_WEIGHT_KEYS.items()})
    if pixel_referring:
        weights["loss_pixel_referring"] = float(loss_cfg["pixel_referring"])
        weights["loss_pixel_referring_dice"] = float(loss_cfg["pixel_referring_dice"])
    return weights


def build_criterion(cfg: dict) -> SetCriterion:
    """The criterion of a resolved config (``cfg["loss"]``, ``cfg["model"]`` dec_layers/aux_loss) with its matcher."""
    loss_cfg = cfg["loss"]
    num_aux_layers = cfg["model"]["dec_layers"] - 1 if cfg["model"]["aux_loss"] else 0
    weight_dict = build_weight_dict(loss_cfg, num_aux_layers, cfg["model"]["pixel_referring"])
    return SetCriterion(build_matcher(cfg), weight_dict,
                        focal_alpha=loss_cfg["focal_alpha"], focal_gamma=loss_cfg["focal_gamma"],
                        box_loss_on_invalid_frames=loss_cfg["boxes_on_invalid_frames"])
