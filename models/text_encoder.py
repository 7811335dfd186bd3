"""The RoBERTa text branch: frozen word features, text-conditioned content queries, optional visual fusion.

- :class:`TextEncoder`: sentences -> frozen RoBERTa word features -> Linear + LayerNorm + Dropout to the
  transformer width. (The paper also projects RoBERTa's pooled sentence feature but never uses it; we don't.)
- :class:`QueryConditioner`: Q learnable query tokens cross-attend to the words; the multiplicative result
  ``q * attn(q, words)`` is the decoder's content query of every frame.
- :class:`VisionLanguageFusion`: the same multiplicative cross-attention with arbitrary tokens as queries;
  ReferFormer applies it to every visual level before the encoder (``model.vl_fusion``; off in the paper).
"""
import warnings

import torch
from torch import nn

from models.position_encoding import PositionEmbeddingSine1D
from util.errors import UserInputError
from util.host_to_device import to_device


class FeatureResizer(nn.Module):
    """Linear ``input_dim -> output_dim``, LayerNorm (eps 1e-12), Dropout: [..., input_dim] -> [..., output_dim]."""

    def __init__(self, input_dim: int, output_dim: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(input_dim, output_dim)
        self.norm = nn.LayerNorm(output_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.fc(x)))


class TextEncoder(nn.Module):
    """Frozen RoBERTa word features projected to ``hidden_dim``.

    RoBERTa stays in eval mode and without gradients whatever mode the parent model is put in; only the
    projection trains. Sentences are padded to the longest in the batch and truncated to ``max_length``
    tokens (special tokens included), with a warning naming each truncated sentence.

    Args:
        roberta: a ``transformers`` RobertaModel (frozen here).
        tokenizer: its tokenizer.
        hidden_dim: output width (the transformer's d_model).
        max_length: tokens kept per sentence, at most what RoBERTa's position table allows.
        dropout: dropout after the projection.
    """

    def __init__(self, roberta: nn.Module, tokenizer, hidden_dim: int, max_length: int, dropout: float):
        super().__init__()
        # RoBERTa's positions start after the padding index, so the table holds max_position_embeddings - pad - 1.
        longest = roberta.config.max_position_embeddings - roberta.config.pad_token_id - 1
        if not 3 <= max_length <= longest:
            raise UserInputError(f"model.text.max_length={max_length} must be between 3 (<s>, a word, </s>) and "
                                 f"{longest}, the longest input this RoBERTa's position table allows.")
        self.roberta = roberta.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.resizer = FeatureResizer(roberta.config.hidden_size, hidden_dim, dropout)

    def train(self, mode: bool = True) -> "TextEncoder":
        """Set the projection's mode; RoBERTa always stays in eval mode (no dropout in a frozen encoder)."""
        super().train(mode)
        self.roberta.eval()
        return self

    def forward(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """captions: B sentences -> word_features [B, L, hidden_dim], padding_mask [B, L] bool (True = pad).

        L is the longest tokenised sentence of the batch (at most ``max_length``), <s> and </s> included.
        Raises ValueError for an empty (or whitespace-only) sentence.
        """
        for index, caption in enumerate(captions):
            if not caption.strip():
                raise ValueError(f"Caption {index} of the batch is empty ({caption!r}); every referring "
                                 "expression needs at least one word. Check the expression in the dataset's "
                                 "meta_expressions.json.")
        tokens = {name: to_device(value, device) for name, value in self.tokenize(captions).items()}
        with torch.no_grad():
            words = self.roberta(**tokens).last_hidden_state  # [B, L, 768]
        padding_mask = tokens["attention_mask"] != 1
        return self.resizer(words.to(self.resizer.fc.weight.dtype)), padding_mask

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask [B, L] of the captions, each truncated to ``max_length`` tokens (special
        tokens included) and right-padded to the longest; one warning per truncated sentence (Python shows each
        distinct one once).

        One tokenizer pass: each sentence is tokenised whole (to tell whether it is cut) and cut here as the
        tokenizer's own truncation would, keeping RoBERTa's closing ``</s>``: ``<s> w_1 ... w_(max_length-2) </s>``.
        """
        rows = self.tokenizer(captions, verbose=False)["input_ids"]  # <s> w_1 ... w_n </s>
        for caption, row in zip(captions, rows):
            if len(row) > self.max_length:
                warnings.warn(f"The caption {caption!r} has {len(row)} RoBERTa tokens; only the first "
                              f"{self.max_length} (model.text.max_length) are used.")
        rows = [row if len(row) <= self.max_length else row[:self.max_length - 1] + row[-1:] for row in rows]
        longest = max(len(row) for row in rows)
        pad_id = self.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([row + [pad_id] * (longest - len(row)) for row in rows]),
                "attention_mask": torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows])}


class VisionLanguageFusion(nn.Module):
    """Tokens attend to the words; the attention output gates the tokens multiplicatively (ReferFormer).

    out = tokens * MHA(query = tokens + tokens_pos, key = words + sine_1d(words), value = words), with the word
    padding as key padding mask. Used for the query conditioning and, optionally, on the visual levels.
    """

    def __init__(self, hidden_dim: int, nheads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden_dim, nheads, dropout=0.0, batch_first=True)
        self.word_position = PositionEmbeddingSine1D(hidden_dim, normalize=True)

    def forward(self, tokens: torch.Tensor, tokens_pos: torch.Tensor | None, words: torch.Tensor,
                word_padding_mask: torch.Tensor) -> torch.Tensor:
        """tokens [N, S, C] (e.g. a visual level, N = B*T), tokens_pos [N, S, C] or None, words [N, L, C] (each
        frame's copy of its sentence), word_padding_mask [N, L] bool (True = pad) -> [N, S, C]."""
        query = tokens if tokens_pos is None else tokens + tokens_pos
        key = words + self.word_position(word_padding_mask).to(words.dtype)
        attended = self.attention(query, key, words, key_padding_mask=word_padding_mask, need_weights=False)[0]
        return tokens * attended


class QueryConditioner(nn.Module):
    """Q learnable query tokens conditioned on the sentence: the decoder's content queries.

    The tokens (no position embedding) go through :class:`VisionLanguageFusion` with the words, giving
    ``q * attn(q, words)`` per sentence.
    """

    def __init__(self, num_queries: int, hidden_dim: int, nheads: int):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.randn(num_queries, hidden_dim))
        self.fusion = VisionLanguageFusion(hidden_dim, nheads)

    def forward(self, words: torch.Tensor, word_padding_mask: torch.Tensor) -> torch.Tensor:
        """words [B, L, C], word_padding_mask [B, L] bool (True = pad) -> content queries [B, Q, C]."""
        tokens = self.query_tokens.unsqueeze(0).expand(words.shape[0], -1, -1)
        return self.fusion(tokens, None, words, word_padding_mask)


def build_text_modules(cfg: dict, roberta: nn.Module,
                       tokenizer) -> tuple[TextEncoder, QueryConditioner, VisionLanguageFusion | None]:
    """The text encoder, the query conditioner and (if ``model.vl_fusion``) the visual fusion of a config."""
    model = cfg["model"]
    encoder = TextEncoder(roberta, tokenizer, model["hidden_dim"], model["text"]["max_length"], model["dropout"])
    conditioner = QueryConditioner(model["num_queries"], model["hidden_dim"], model["nheads"])
    fusion = VisionLanguageFusion(model["hidden_dim"], model["nheads"]) if model["vl_fusion"] else None
    return encoder, conditioner, fusion
