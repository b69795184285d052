"""Training/validation split by document: all tokens of a document fall on the same side.

Tokens of one document share context, so a token-level split would validate on near-copies of
training tokens and overstate accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class SplitConfig:
    """How documents are split into training and validation."""

    val_fraction: float = 0.1
    """Fraction of the documents (not tokens) held out for validation; at least one on each side."""
    seed: int = 0
    """Seeds the random choice of validation documents."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"split.val_fraction must be in (0, 1), got {self.val_fraction}")


def document_split(documents: Sequence[str], config: SplitConfig) -> np.ndarray:
    """Validation mask over tokens: True where the token's document is a validation document.

    Of the D distinct documents, round(val_fraction * D) (clipped to 1..D-1) are drawn without
    replacement, uniformly, with ``seed``; the draw depends only on the set of document names.

    Raises:
        ValueError: if the tokens come from fewer than 2 documents.
    """
    names, inverse = np.unique(np.asarray(documents, dtype=object), return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"the tokens come from {len(names)} document(s); a split by document needs at least 2 "
                         "(observe more contexts, or a source with shorter documents)")
    n_val = min(max(round(config.val_fraction * len(names)), 1), len(names) - 1)
    chosen = np.random.default_rng(config.seed).permutation(len(names))[:n_val]
    is_val = np.zeros(len(names), dtype=bool)
    is_val[chosen] = True
    return is_val[inverse.reshape(-1)]
