"""Head modules: dropout + linear on one sentence representation, or on a bi-encoded pair.

Plain torch modules (they travel with a saved model); which head a task gets is its kind's choice
(`TaskKind.build_head` in hf_multitask/kinds/).
"""

from __future__ import annotations

import torch
from torch import nn


class SentenceHead(nn.Module):
    """Dropout + linear on one pooled representation `(batch, hidden)` -> `(batch, num_labels)`.

    Used for single sentences and cross-encoded pairs, as in the CS224N study.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor, pooled_b: torch.Tensor | None = None) -> torch.Tensor:
        if pooled_b is not None:  # a bi-encoded pair: reading only its first sentence would train on half the input
            raise ValueError("SentenceHead reads one representation, but got a bi-encoded pair's second one too: a "
                             "kind that allows pair_encoding='bi' must build a pair head for it (as "
                             "PairClassificationHead), or refuse 'bi' in its check_spec")
        return self.out_proj(self.dropout(pooled))


class PairClassificationHead(nn.Module):
    """Bi-encoder classification: [u; v; |u - v|] -> dropout -> linear (Reimers & Gurevych 2019)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(3 * hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor, pooled_b: torch.Tensor) -> torch.Tensor:
        features = torch.cat([pooled, pooled_b, (pooled - pooled_b).abs()], dim=-1)  # (batch, 3 * hidden)
        return self.out_proj(self.dropout(features))


class CosineRegressionHead(nn.Module):
    """Bi-encoder regression: cosine(u, v) mapped onto the score range, `low + cos * (high - low)`.

    The sentence-transformers convention (gold scores divided by the range's width are compared with the
    cosine), so a sentence-embedding model such as all-MiniLM-L6-v2 starts close to its zero-shot
    quality. Has no parameters: the encoder does all the learning.
    """

    def __init__(self, score_range: tuple[float, float]):
        super().__init__()
        self.low, self.high = score_range

    def forward(self, pooled: torch.Tensor, pooled_b: torch.Tensor) -> torch.Tensor:
        cos = nn.functional.cosine_similarity(pooled.float(), pooled_b.float(), dim=-1)  # (batch,)
        return (self.low + cos * (self.high - self.low)).unsqueeze(-1)  # (batch, 1)


class ChoiceHead(nn.Module):
    """Multiple choice: dropout + linear to one score per cross-encoded (context, choice) row; the `(batch *
    num_choices,)` scores are read back as `(batch, num_choices)` logits."""

    def __init__(self, hidden_size: int, num_choices: int, dropout: float):
        super().__init__()
        self.num_choices = num_choices
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, 1)

    def forward(self, pooled: torch.Tensor, pooled_b: torch.Tensor | None = None) -> torch.Tensor:
        return self.out_proj(self.dropout(pooled)).view(-1, self.num_choices)
