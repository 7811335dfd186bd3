"""HCD: the whole referring video segmentation model.

frames + sentence -> noise-free T2V UNet features (``models/backbone``) -> input projections and 2-D sine
positions -> deformable transformer whose content queries are conditioned on RoBERTa words
(``models/text_encoder.py``, ``models/deformable_transformer.py``) -> per decoder layer: class logit, box and
hybrid sub-pixel masks (``models/mask_head.py``) -> one query per clip refined by TCMR (``models/tcmr.py``).

The same ``Q`` query slots are used in every frame, so slot ``q`` is one object hypothesis through the clip. In
training the slot to refine is the one the matcher assigns to the target; at inference it is the slot with the
best frame-averaged score.
"""
import math

import torch
from einops import rearrange, repeat
from torch import nn
from torch.nn import functional as F

from models.clip_targets import stack_targets
from models.deformable_transformer import inverse_sigmoid
from models.mask_head import PixelFeatures
from models.mlp import MLP
from models.position_encoding import PositionEmbeddingSine2D
from util.nested_tensor import NestedTensor


def best_query(pred_logits: torch.Tensor) -> torch.Tensor:
    """The slot with the highest frame-averaged probability: [B, T, Q, 1] -> [B]."""
    return pred_logits.sigmoid().mean(dim=1)[..., 0].argmax(dim=1)


class HCD(nn.Module):
    """The full model; see the module docstring for the data flow."""

    def __init__(
        self,
        backbone: nn.Module,
        text_encoder: nn.Module,
        query_conditioner: nn.Module,
        transformer: nn.Module,
        mask_head: nn.Module,
        mask_refiner: nn.Module,
        num_queries: int,
        num_feature_levels: int,
        aux_loss: bool,
        matcher: nn.Module | None = None,
        vl_fusion: nn.Module | None = None,
        pixel_referring: nn.Module | None = None,
        text_alignment: nn.Module | None = None,
        object_referring: nn.Module | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.query_conditioner = query_conditioner
        self.transformer = transformer
        self.mask_head = mask_head
        self.mask_refiner = mask_refiner
        self.matcher = matcher
        self.vl_fusion = vl_fusion
        self.pixel_referring = pixel_referring
        self.text_alignment = text_alignment
        self.object_referring = object_referring
        self.aux_loss = aux_loss
        hidden_dim = transformer.d_model
        backbone_channels = list(backbone.num_channels)
        if num_feature_levels < len(backbone_channels):
            raise ValueError(
                f"num_feature_levels={num_feature_levels} is smaller than the {len(backbone_channels)} backbone levels"
            )
        self.num_memory_levels = len(backbone_channels)
        projections = [
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(32, hidden_dim)) for c in backbone_channels
        ]
        in_channels = backbone_channels[-1]
        for _ in range(num_feature_levels - len(backbone_channels)):
            projections.append(
                nn.Sequential(nn.Conv2d(in_channels, hidden_dim, 3, stride=2, padding=1), nn.GroupNorm(32, hidden_dim))
            )
            in_channels = hidden_dim
        self.input_proj = nn.ModuleList(projections)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.zeros_(projection[0].bias)
        self.position = PositionEmbeddingSine2D(hidden_dim // 2, normalize=True)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        num_layers = transformer.decoder.num_layers
        self.class_embed = nn.ModuleList(nn.Linear(hidden_dim, 1) for _ in range(num_layers))
        self.bbox_embed = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3) for _ in range(num_layers))
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for class_embed, bbox_embed in zip(self.class_embed, self.bbox_embed):
            nn.init.constant_(class_embed.bias, prior_bias)
            nn.init.zeros_(bbox_embed.layers[-1].weight)
            nn.init.zeros_(bbox_embed.layers[-1].bias)
        # Only the first layer predicts a box from the bare reference point: its size starts at sigmoid(-2) of the
        # image. Later layers refine the previous box in logit space, so their zero delta keeps its size (with -2
        # on every layer, the initial boxes of layers 2 and 3 of the paper's 4 shrink to 0.018 and 0.0025).
        nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        transformer.decoder.bbox_embed = self.bbox_embed

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the model's own layers: float32, or float64 after ``.double()`` (a numerics check).
        The frozen encoders may hold theirs lower (``model.backbone.frozen_dtype``)."""
        return self.query_embed.weight.dtype

    def forward(
        self,
        samples: NestedTensor,
        captions: list[str],
        targets: list[dict] | None = None,
        refine_all_queries: bool = False,
    ) -> dict:
        """Segment the referred object of each clip.

        Args:
            samples: frames [B0, T, 3, H, W] (ImageNet-normalised, H and W multiples of 32) and padding mask
                [B0, T, H, W] (True = padding).
            captions: B = B0 x K sentences grouped by clip: K sentences share the visual work of their clip.
            targets: in training, the clip targets (see ``datasets``); the matcher then picks the slot to refine.
            refine_all_queries: refine every slot (A2D/JHMDB evaluation scores all of them).
        Returns:
            pred_logits: [B, T, Q, 1] class logits.
            pred_boxes: [B, T, Q, 4] normalised cxcywh boxes.
            pred_masks_low: [B, T, Q, H/2, W/2] mask logits before refinement.
            pred_masks: [B, T, H, W] refined logits of the selected slot ([B, T, Q, H, W] with
                ``refine_all_queries``).
            selected_query: [B] the refined slot.
            aux_outputs: the same dicts for the earlier decoder layers (training with aux_loss only).
            pred_referring: [B, T, H/8, W/8] text-to-pixel logits (only with ``model.pixel_referring``).
        """
        num_frames = samples.tensors.shape[1]
        batch = len(captions)  # clips x captions per clip: the backbone shares each clip's frames between them
        features = self.backbone(samples, captions)
        words, word_padding = self.text_encoder(captions, samples.tensors.device)
        content = self.query_conditioner(words, word_padding)  # [B, Q, C]
        srcs, masks, positions = self._levels(features.features, features.masks)
        if self.vl_fusion is not None:
            srcs = self._fuse_text(srcs, masks, positions, words, word_padding, num_frames)
        decoded = self.transformer(
            srcs, masks, positions, self.query_embed.weight, repeat(content, "b q c -> (b t) q c", t=num_frames)
        )
        memory = decoded["memory"][: self.num_memory_levels]
        valid_ratios = decoded["valid_ratios"][:, 0]  # [N, 2] of the stride-8 level
        num_layers = len(decoded["hs"])
        layer_indices = range(num_layers) if targets is not None and self.aux_loss else [num_layers - 1]
        pixels = self.mask_head.pixel_features(memory)  # the same for every layer
        frame_words = None if self.text_alignment is None and self.object_referring is None else (
            repeat(words, "b l c -> (b t) l c", t=num_frames), repeat(word_padding, "b l -> (b t) l", t=num_frames))
        layers = [self._layer_output(decoded, index, pixels, valid_ratios, batch, frame_words, memory[0])
                  for index in layer_indices]
        matched = stack_targets(targets, valid_ratios.device) if targets is not None else None
        for layer in layers:
            if refine_all_queries:
                slots = None
            elif matched is not None:
                slots = self.matcher(layer, matched)
            else:
                slots = best_query(layer["pred_logits"])
            layer["pred_masks"] = self._refine(layer.pop("mask_features"), slots, features, batch)
            layer["selected_query"] = slots
        outputs = layers[-1]
        if self.pixel_referring is not None:
            outputs["pred_referring"] = self.pixel_referring(memory[0], words, word_padding)
        if targets is not None and self.aux_loss:
            outputs["aux_outputs"] = layers[:-1]
        return outputs

    def _levels(
        self, features: list[torch.Tensor], feature_masks: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Project backbone maps to the transformer width and add the extra strided levels.

        features: [N, C_l, h_l, w_l]; masks: [N, h_l, w_l] -> srcs, masks and positions, one per level.
        """
        srcs, masks = [], []
        for projection, feature, mask in zip(self.input_proj, features, feature_masks):
            srcs.append(projection(feature))
            masks.append(mask)
        source = features[-1]
        for projection in self.input_proj[len(features):]:
            source = projection(source)
            srcs.append(source)
            masks.append(F.interpolate(masks[-1][None].float(), size=source.shape[-2:])[0].bool())
        positions = [self.position(mask).to(src.dtype) for src, mask in zip(srcs, masks)]
        return srcs, masks, positions

    def _fuse_text(self, srcs, masks, positions, words, word_padding, num_frames):
        """Fusion of the words into every visual level (``model.vl_fusion``), added to the level as a residual.

        ReferFormer replaces each level by the gated product; the residual keeps the visual features whatever the
        fusion starts as, so the text adds to them instead of scrambling them at initialisation.
        """
        words = repeat(words, "b l c -> (b t) l c", t=num_frames)
        word_padding = repeat(word_padding, "b l -> (b t) l", t=num_frames)
        fused = []
        for src, position in zip(srcs, positions):
            height, width = src.shape[-2:]
            tokens = self.vl_fusion(
                rearrange(src, "n c h w -> n (h w) c"), rearrange(position, "n c h w -> n (h w) c"), words, word_padding
            )
            fused.append(src + rearrange(tokens, "n (h w) c -> n c h w", h=height, w=width))
        return fused

    def _layer_output(
        self, decoded: dict, index: int, pixels: PixelFeatures, valid_ratios: torch.Tensor, batch: int,
        frame_words: tuple[torch.Tensor, torch.Tensor] | None = None, memory: torch.Tensor | None = None,
    ) -> dict:
        """Class logits, boxes and stride-8 mask features of decoder layer ``index``. With ``model.text_alignment``
        or ``model.object_referring``, ``frame_words`` (each frame's copy of its sentence's words [N, L, C] and
        padding [N, L]) add to the logits the slots' alignment with the words, read from the slot's decoder output
        or from ``memory`` (the stride-8 level [N, C, h, w]) under the slot's mask and its box."""
        queries = decoded["hs"][index]  # [N, Q, C]
        reference = decoded["init_reference"] if index == 0 else decoded["inter_references"][index - 1]
        delta = self.bbox_embed[index](queries)  # [N, Q, 4]
        if reference.shape[-1] == 4:
            boxes = (delta + inverse_sigmoid(reference)).sigmoid()
        else:
            boxes = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], dim=-1).sigmoid()
        logits = self.class_embed[index](queries)
        if self.text_alignment is not None:
            logits = logits + self.text_alignment(queries, *frame_words)
        mask_features = self.mask_head(queries, pixels, boxes[..., :2].detach(), valid_ratios)  # [N, Q, c, h, w]
        low = F.pixel_shuffle(rearrange(mask_features, "n q c h w -> n (q c) h w"), self.mask_refiner.factor)
        if self.object_referring is not None:
            logits = logits + self.object_referring(memory, low, boxes, *frame_words)
        return {
            "pred_logits": rearrange(logits, "(b t) q k -> b t q k", b=batch),
            "pred_boxes": rearrange(boxes, "(b t) q k -> b t q k", b=batch),
            "pred_masks_low": rearrange(low, "(b t) q h w -> b t q h w", b=batch),
            "mask_features": mask_features,
        }

    def _refine(self, mask_features: torch.Tensor, slots: torch.Tensor | None, features, batch: int) -> torch.Tensor:
        """TCMR refinement of the selected slot of every clip (or of every slot when ``slots`` is None).

        mask_features: [N, Q, c, h, w] -> [B, T, H, W] (or [B, T, Q, H, W]).
        """
        stride8, stride4 = features.features[0], features.stride4
        if slots is None:
            num_queries = mask_features.shape[1]
            refined = self.mask_refiner(
                rearrange(mask_features, "n q c h w -> (n q) c h w"),
                repeat(stride8, "n c h w -> (n q) c h w", q=num_queries),
                repeat(stride4, "n c h w -> (n q) c h w", q=num_queries),
            )
            return rearrange(refined, "(b t q) h w -> b t q h w", b=batch, q=num_queries)
        per_frame = repeat(slots, "b -> (b t)", t=mask_features.shape[0] // batch)
        selected = mask_features[torch.arange(mask_features.shape[0], device=slots.device), per_frame]
        refined = self.mask_refiner(selected, stride8, stride4)
        return rearrange(refined, "(b t) h w -> b t h w", b=batch)
