"""Primitives for joint-attention (MMDiT-style) conditioning: the pooled-vector embedder and class context tokens.

In SD3's MMDiT (Esser et al. 2024) the semantic condition reaches the network two ways: as *context tokens* that
take part in the joint attention with the image tokens, and as a *pooled vector* that is embedded by a small MLP
and added to the time embedding to form the adaLN vector ``c``. For captions the pooled vector is the concatenated
projected CLIP embeddings (2048-d); for class labels the same two paths are served by :class:`ClassTokens`
(context tokens) and a plain :class:`~conditioning.embedders.ClassEmbedder` (the vector).

Legend: N batch, k class tokens, E' pooled width, D model width.
"""

from __future__ import annotations

from torch import Tensor, nn

from conditioning.embedders import ClassEmbedder
from conditioning.types import Cond

__all__ = ["ClassTokens", "PooledEmbedder"]


class PooledEmbedder(nn.Module):
    """Pooled text vector → (N, D): Linear → SiLU → Linear (SD3's ``VectorEmbedder``, the ``y`` input).

    The vector is read from ``cond.pooled``. Dropping the caption for classifier-free guidance is the conditioner's
    job (it substitutes the null prompt's encoding), so this module has no null of its own.
    """

    def __init__(self, pooled_dim: int, hidden_size: int) -> None:
        """Build the embedder.

        Args:
            pooled_dim: width E' of ``cond.pooled`` (2048 in SD3: CLIP-L's 768 + CLIP-G's 1280).
            hidden_size: output width D.
        """
        super().__init__()
        self.pooled_dim = pooled_dim
        # Sequential indices 0 and 2 keep the reference's state-dict names (y_embedder.mlp.0 / mlp.2).
        self.mlp = nn.Sequential(nn.Linear(pooled_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, cond: Cond) -> Tensor:
        """Embed ``cond.pooled`` (N, E') to (N, D)."""
        pooled = cond.pooled
        if pooled is None:
            raise ValueError(f"PooledEmbedder needs cond.pooled (N, {self.pooled_dim}), but it is None")
        if pooled.dim() != 2 or pooled.shape[1] != self.pooled_dim:
            raise ValueError(f"cond.pooled has shape {tuple(pooled.shape)}, expected (N, {self.pooled_dim})")
        return self.mlp(pooled.to(self.mlp[0].weight.dtype))


class ClassTokens(nn.Module):
    """Class label → k context tokens (N, k, D) from one table of ``num_classes + 1`` rows of width k·D.

    The last row is the learned null class, selected where ``cond.semantic_null`` (as in
    :class:`~conditioning.embedders.ClassEmbedder`, which this wraps). With k = 1 this is "the class as one context
    token"; k > 1 gives the attention several keys per class.
    """

    def __init__(self, num_classes: int, hidden_size: int, num_tokens: int = 1) -> None:
        """Build the table.

        Args:
            num_classes: number of real classes.
            hidden_size: token width D.
            num_tokens: tokens per class k.
        """
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.hidden_size = hidden_size
        self.num_tokens = num_tokens
        self.embedder = ClassEmbedder(num_classes, num_tokens * hidden_size)

    def forward(self, cond: Cond) -> Tensor:
        """Look up ``cond.label`` (null row where ``cond.semantic_null``) as (N, k, D) tokens."""
        emb = self.embedder(cond)
        return emb.view(emb.shape[0], self.num_tokens, self.hidden_size)
