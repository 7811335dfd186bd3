"""The sentence as every slot's content query (ReferFormer's conditional queries).

The paper conditions its Q learnable query tokens on the words (``models.text_encoder.QueryConditioner``: each
token attends to the words and gates itself with the result), so the slots start as different functions of the
sentence. ReferFormer gives every slot the same content instead, the sentence feature, and lets the slots differ
only by their learnt positional queries (here ``HCD.query_embed``, which also gives their reference points): every
slot then asks the decoder for the object the sentence names. ``model.sentence_queries`` switches this on; off in
the paper configurations.
"""
import torch
from einops import repeat
from torch import nn

from models.pixel_referring import masked_mean


class SentenceQueries(nn.Module):
    """Content queries [B, Q, C]: the masked mean of the sentence's projected words, through a linear layer, for
    every one of the Q slots."""

    def __init__(self, num_queries: int, hidden_dim: int):
        super().__init__()
        self.num_queries = num_queries
        self.sentence = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, words: torch.Tensor, word_padding_mask: torch.Tensor) -> torch.Tensor:
        """words [B, L, C], word_padding_mask [B, L] bool (True = pad) -> content queries [B, Q, C]."""
        sentence = self.sentence(masked_mean(words, word_padding_mask))
        return repeat(sentence, "b c -> b q c", q=self.num_queries)
