"""Prefix-activation caching: a chain restricted to a component in block l never changes blocks below l.

The residual stream entering block l is then the same at every step of the chain as at w*, for
every batch. It is computed once per batch (lazily, the first time a chain of a component whose
first block is l reads that batch), kept on the device, and the loss runs from block l onwards:

    full:    embed -> block 0 .. block L-1 -> final norm -> head -> per-token cross-entropy
    cached:           h_l (stored) -> block l .. block L-1 -> final norm -> head -> cross-entropy

Forward and backward both start at block l. The output head alone (``unembed``) stores the final
normed hidden state and runs only the head and the loss; the embedding gets no saving. The values
are the same as the full pass's (block l receives the very tensor the full pass would give it),
so chi does not change beyond floating-point noise (``tests/test_prefix_cache.py``).

Which batches are kept is planned from a memory budget, observation batches first (they are read
at every draw), then the reference batch, then the SGLD minibatches of the sampling pool; a batch
that does not fit runs the full model. Supported: GPT-NeoX (Pythia); other models run uncached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._pytree import register_pytree_node

from .components import Component

_BLOCK = re.compile(r"gpt_neox\.layers\.(\d+)\.")
_HEAD = ("lm_head.", "embed_out.")


@dataclass(frozen=True)
class CachedPrefix:
    """A batch of token ids with the residual stream entering block ``start`` at w* (start == n_layers:
    the final norm's output)."""

    input_ids: Tensor
    hidden: Tensor
    start: int


# A pytree, so that batched chains can stack and vmap it like a tensor (``start`` is static).
register_pytree_node(CachedPrefix, lambda c: ([c.input_ids, c.hidden], c.start),
                     lambda values, start: CachedPrefix(values[0], values[1], start),
                     serialized_type_name="lit_susc.prefix.CachedPrefix")


def component_start(model: nn.Module, component: Component) -> int | None:
    """The first block holding a parameter of ``component`` (n_layers for the output head alone),
    or None when nothing before the component can be cached (the embedding, an unknown layout)."""
    if getattr(model.config, "model_type", None) != "gpt_neox":
        return None
    n_layers, starts = model.config.num_hidden_layers, []
    for name in component:
        match = _BLOCK.match(name)
        if match:
            starts.append(int(match.group(1)))
        elif name.startswith(_HEAD):
            starts.append(n_layers)
        else:
            return None
    start = min(starts)
    return None if start == 0 else start


def trunk_hidden(model: nn.Module, batch: Tensor | CachedPrefix) -> Tensor:
    """The final normed hidden state [B, T, H] of a batch of token ids, or of a cached prefix."""
    base = model.base_model
    if not isinstance(batch, CachedPrefix):
        return base(input_ids=batch, use_cache=False).last_hidden_state
    if batch.start == model.config.num_hidden_layers:
        return batch.hidden
    blocks = base.layers
    base.layers = blocks[batch.start:]  # the model's own forward, over the blocks from start on
    try:
        return base(inputs_embeds=batch.hidden, use_cache=False).last_hidden_state
    finally:
        base.layers = blocks


class PrefixCache:
    """The cached prefixes of the current component's first block, within a memory budget.

    ``begin(component)`` at the start of each chain keeps the cache when the first block is the
    same as the previous component's, and empties it otherwise. ``view(kind, index, batch)``
    returns the batch's ``CachedPrefix`` (computing and storing it when the plan allows) or the
    batch itself.
    """

    KINDS = ("observation", "reference", "sampling")

    def __init__(self, model: nn.Module, budget_bytes: int, counts: dict[str, list[int]]) -> None:
        """``counts[kind]``: token counts (contexts x length) of each batch of that kind, in order."""
        self.model, self.budget = model, budget_bytes
        self.counts = counts
        self.start: int | None = None
        self._store: dict[tuple[str, int], CachedPrefix] = {}
        self._allowed: set[tuple[str, int]] = set()
        self.plan_bytes = 0

    def plan(self) -> str:
        """Which batches get cached: observation, then reference, then sampling, until the budget is used."""
        width = self.model.config.hidden_size * torch.finfo(self.model.dtype).bits // 8
        used, allowed, report = 0, set(), []
        for kind in self.KINDS:
            kept = 0
            for i, tokens in enumerate(self.counts.get(kind, [])):
                if used + tokens * width <= self.budget:
                    used += tokens * width
                    allowed.add((kind, i))
                    kept += 1
            total = len(self.counts.get(kind, []))
            report.append(f"{kind} {kept}/{total} batches")
        self._allowed, self.plan_bytes = allowed, used
        return (f"prefix cache: {used / 2**20:.1f} MiB of the {self.budget / 2**20:.0f} MiB budget per block "
                f"({', '.join(report)})")

    def begin(self, component: Component) -> None:
        start = component_start(self.model, component)
        if start != self.start:
            self._store.clear()
            self.start = start

    def view(self, kind: str, index: int, batch: Tensor) -> Tensor | CachedPrefix:
        if self.start is None:
            return batch
        key = (kind, index)
        cached = self._store.get(key)
        if cached is not None:
            return cached
        cached = CachedPrefix(input_ids=batch, hidden=self._prefix(batch), start=self.start)
        if key in self._allowed:
            self._store[key] = cached
        return cached

    @torch.no_grad()
    def _prefix(self, input_ids: Tensor) -> Tensor:
        # The blocks below start never move during the chain, so computing this at any step equals w*'s.
        if self.start == self.model.config.num_hidden_layers:
            return self.model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        from .aux.features import ResidualFeatures  # here: lit_susc.aux imports lit_susc.lm, which imports this

        capture = ResidualFeatures(self.model, [self.start])
        try:
            return capture(input_ids)
        finally:
            capture.remove()
