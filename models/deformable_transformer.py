"""The Deformable-DETR transformer (Zhu et al., 2021) as used by ReferFormer/SgMg/HCD, one frame per batch item.

Every frame of every clip is an item of the batch N = B*T: the encoder attends within a frame across the
feature levels with multi-scale deformable attention; the decoder refines Q queries per frame whose content part
``tgt`` comes from the text (shared over the frames of a clip) and whose positional part ``query_embed`` is
learnt and shared by all frames, so that slot q follows one object hypothesis through the clip. Layers are
post-norm. The decoder iteratively refines its reference points when the model hands it its box heads
(``decoder.bbox_embed``).
"""
import copy
import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.ops import MSDeformAttn
from util.host_to_device import to_device


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x clamped below at ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class DeformableTransformer(nn.Module):
    """Encoder + decoder over ``num_feature_levels`` maps of width ``d_model``."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 4,
                 num_decoder_layers: int = 4, dim_feedforward: int = 2048, dropout: float = 0.1,
                 num_feature_levels: int = 4, enc_n_points: int = 4, dec_n_points: int = 4):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_feature_levels = num_feature_levels
        encoder_layer = DeformableEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                               enc_n_points)
        self.encoder = DeformableEncoder(encoder_layer, num_encoder_layers)
        decoder_layer = DeformableDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                               dec_n_points)
        self.decoder = DeformableDecoder(decoder_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: Xavier for matrices, MSDeformAttn's own init, normal level embeddings."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], masks: list[torch.Tensor], pos_embeds: list[torch.Tensor],
                query_embed: torch.Tensor, tgt: torch.Tensor) -> dict:
        """Encode the levels and decode the queries.

        Args:
            srcs: per level [N, C, h_l, w_l] features (N = B*T frames).
            masks: per level [N, h_l, w_l] bool, True = padding.
            pos_embeds: per level [N, C, h_l, w_l] position embeddings.
            query_embed: [Q, C] positional queries (an ``nn.Embedding`` weight).
            tgt: [N, Q, C] content queries.
        Returns:
            hs: [num_decoder_layers, N, Q, C] decoder outputs of every layer.
            init_reference: [N, Q, 2] sigmoid(Linear(query_embed)), the reference of layer 0's box.
            inter_references: [num_decoder_layers, N, Q, 4] (or [.., 2] without box heads) reference points after
                each layer's refinement, detached: layer l's box is predicted relative to
                ``init_reference`` (l = 0) or ``inter_references[l - 1]``.
            memory: per level [N, C, h_l, w_l] encoder output.
            valid_ratios: [N, L, 2] (w, h) fraction of each level that is not padding.
        """
        if not len(srcs) == len(masks) == len(pos_embeds) == self.num_feature_levels:
            raise ValueError(f"DeformableTransformer expects {self.num_feature_levels} levels of srcs, masks and "
                             f"pos_embeds, got {len(srcs)}, {len(masks)} and {len(pos_embeds)}.")
        # The level sizes as Python ints for the reshapes and checks, as tensors for the kernels: both made here,
        # once per forward, so that no layer has to read a device tensor back (a wait for the device).
        sizes = [(src.shape[-2], src.shape[-1]) for src in srcs]
        starts = [0] + list(itertools.accumulate(height * width for height, width in sizes))[:-1]
        spatial_shapes = to_device(torch.tensor(sizes), srcs[0].device)  # long [L, 2]
        level_start_index = to_device(torch.tensor(starts), srcs[0].device)  # long [L]
        levels = LevelShapes(sizes, spatial_shapes, level_start_index)
        valid_ratios = torch.stack([valid_ratio(mask) for mask in masks], dim=1)  # [N, L, 2]
        src_flatten = torch.cat([rearrange(src, "n c h w -> n (h w) c") for src in srcs], dim=1)  # [N, S, C]
        mask_flatten = torch.cat([rearrange(mask, "n h w -> n (h w)") for mask in masks], dim=1)  # [N, S]
        pos_flatten = torch.cat([rearrange(pos, "n c h w -> n (h w) c") + self.level_embed[level]
                                 for level, pos in enumerate(pos_embeds)], dim=1)  # [N, S, C]

        memory = self.encoder(src_flatten, levels, valid_ratios, pos_flatten, mask_flatten)  # [N, S, C]

        query_pos = query_embed.unsqueeze(0).expand(tgt.shape[0], -1, -1)  # [N, Q, C]
        init_reference = self.reference_points(query_pos).sigmoid()  # [N, Q, 2]
        hs, inter_references = self.decoder(tgt, init_reference, memory, levels, valid_ratios, query_pos,
                                            mask_flatten)

        memory_maps = [rearrange(level_memory, "n (h w) c -> n c h w", h=h, w=w)
                       for level_memory, (h, w) in zip(memory.split([h * w for h, w in sizes], 1), sizes)]
        return {"hs": hs, "init_reference": init_reference, "inter_references": inter_references,
                "memory": memory_maps, "valid_ratios": valid_ratios}


class LevelShapes(NamedTuple):
    """The feature levels' sizes, in both forms the layers need.

    sizes: (H_l, W_l) per level, Python ints (reshapes, checks).
    spatial_shapes: long [L, 2] and level_start_index: long [L] on the features' device (the kernels).
    """
    sizes: list[tuple[int, int]]
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor


def valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """[N, h, w] padding mask (padding at the bottom/right) -> [N, 2] (valid width / w, valid height / h)."""
    _, height, width = mask.shape
    valid_height = (~mask[:, :, 0]).sum(1)
    valid_width = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_width.float() / width, valid_height.float() / height], dim=-1)


class FeedForward(nn.Module):
    """Post-norm FFN block: norm(x + dropout(W2 dropout(relu(W1 x))))."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x))))))


class DeformableEncoderLayer(nn.Module):
    """Multi-scale deformable self-attention over all levels of a frame, then the FFN (post-norm)."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, levels: LevelShapes,
                padding_mask: torch.Tensor) -> torch.Tensor:
        """src, pos [N, S, C]; reference_points [N, S, L, 2]; padding_mask [N, S] -> [N, S, C]."""
        attended = self.self_attn(src + pos, reference_points, src, levels.spatial_shapes, levels.level_start_index,
                                  padding_mask, input_spatial_sizes=levels.sizes)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableEncoder(nn.Module):
    """A stack of encoder layers; every token's reference point is its own pixel centre on every level."""

    def __init__(self, layer: DeformableEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    @staticmethod
    def reference_points(sizes: list[tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
        """Pixel centres of every level, normalised by the valid extent: [N, S, L, 2] (x, y).

        A token at the centre of pixel (i, j) of level l lies at ((j + .5) / valid_w_l, (i + .5) / valid_h_l)
        of its frame's content; multiplying by each level's valid ratio maps it into that level's [0, 1] frame.
        """
        points = []
        for level, (height, width) in enumerate(sizes):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=valid_ratios.device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=valid_ratios.device),
                indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)  # [N, h*w]
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference = torch.cat(points, 1)  # [N, S, 2]
        return reference[:, :, None] * valid_ratios[:, None]  # [N, S, L, 2]

    def forward(self, src: torch.Tensor, levels: LevelShapes, valid_ratios: torch.Tensor, pos: torch.Tensor,
                padding_mask: torch.Tensor) -> torch.Tensor:
        """src, pos [N, S, C]; valid_ratios [N, L, 2]; padding_mask [N, S] -> memory [N, S, C]."""
        reference_points = self.reference_points(levels.sizes, valid_ratios).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, reference_points, levels, padding_mask)
        return src


class DeformableDecoderLayer(nn.Module):
    """Query self-attention, multi-scale deformable cross-attention into the memory, FFN (each post-norm)."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout_self = nn.Dropout(dropout)
        self.norm_self = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout_cross = nn.Dropout(dropout)
        self.norm_cross = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference_points: torch.Tensor,
                memory: torch.Tensor, levels: LevelShapes, memory_padding_mask: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos [N, Q, C]; reference_points [N, Q, L, 2|4]; memory [N, S, C] -> [N, Q, C]."""
        query = tgt + query_pos
        attended = self.self_attn(query, query, tgt, need_weights=False)[0]
        tgt = self.norm_self(tgt + self.dropout_self(attended))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, levels.spatial_shapes,
                                   levels.level_start_index, memory_padding_mask, input_spatial_sizes=levels.sizes)
        tgt = self.norm_cross(tgt + self.dropout_cross(attended))
        return self.ffn(tgt)


class DeformableDecoder(nn.Module):
    """A stack of decoder layers with optional iterative box refinement.

    ``bbox_embed`` is None until the model sets it to its ModuleList of per-layer box heads (the same modules
    that predict its boxes). Each layer then moves the reference points: ref = sigmoid(delta + logit(ref)),
    detached, with 2-d points becoming 4-d boxes (cx, cy, w, h) after the first layer.
    """

    def __init__(self, layer: DeformableDecoderLayer, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.bbox_embed: nn.ModuleList | None = None

    def forward(self, tgt: torch.Tensor, reference_points: torch.Tensor, memory: torch.Tensor, levels: LevelShapes,
                valid_ratios: torch.Tensor, query_pos: torch.Tensor,
                memory_padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt, query_pos [N, Q, C]; reference_points [N, Q, 2] -> hs [layers, N, Q, C], refs [layers, N, Q, 2|4]."""
        outputs, references = [], []
        for index, layer in enumerate(self.layers):
            # Reference points are relative to the valid content; scale them into every level's padded frame.
            scale = valid_ratios if reference_points.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            tgt = layer(tgt, query_pos, reference_points[:, :, None] * scale[:, None], memory, levels,
                        memory_padding_mask)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[index](tgt)  # [N, Q, 4]
                if reference_points.shape[-1] == 4:
                    refined = delta + inverse_sigmoid(reference_points)
                else:
                    refined = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                reference_points = refined.sigmoid().detach()
            outputs.append(tgt)
            references.append(reference_points)
        return torch.stack(outputs), torch.stack(references)


def build_deformable_transformer(cfg: dict) -> DeformableTransformer:
    """The transformer of a resolved config (``cfg["model"]``)."""
    model = cfg["model"]
    return DeformableTransformer(
        d_model=model["hidden_dim"], nhead=model["nheads"], num_encoder_layers=model["enc_layers"],
        num_decoder_layers=model["dec_layers"], dim_feedforward=model["dim_feedforward"], dropout=model["dropout"],
        num_feature_levels=model["num_feature_levels"], enc_n_points=model["enc_n_points"],
        dec_n_points=model["dec_n_points"])
