"""Prefix-activation caching: a chain restricted to a component in block l never changes blocks below l.

The residual stream entering block l is then the same at every step of the chain as at w*, for
every batch. It is computed once per batch (lazily, the first time a chain of a component whose
first block is l reads that batch), kept on the device, and the loss runs from block l onwards:

    full:    embed -> block 0 .. block L-1 -> final norm -> head -> per-token cross-entropy
    cached:           h_l (stored) -> block l .. block L-1 -> final norm -> head -> cross-entropy

Within block l, a branch the component does not touch is constant too. A block with a
parallel residual (Pythia) computes

    h_{l+1} = mlp(ln2(h_l)) + attn(ln1(h_l)) + h_l,

so a head's chains never change the MLP branch, and an MLP's chains never change the attention
branch; with a sequential residual an MLP's chains never change the attention output. That
branch's output is stored beside h_l and block l skips it (``Cut.constant``). This also gives
block-0 components a saving. What is stored is the branch module's output: a pre-norm is skipped
with the module, a norm on the module's output (OLMo 2) runs on the stored value as it would on the
live one.

Forward and backward both start at block l. The output head alone (``unembed``) stores the final
normed hidden state and runs only the head and the loss; the embedding gets no saving. The values
are the same as the full pass's (block l and the sum of its branches receive the very tensors the
full pass would give them), so chi does not change beyond floating-point noise
(``tests/test_prefix_cache.py``).

Which batches are kept is planned from a memory budget, observation batches first (they are read
at every draw), then the reference batch, then the SGLD minibatches of the sampling pool; a batch
that does not fit runs the full model. What the cut of a component is, and how to run a model
from a block, is asked of the family's adapter (lit_susc.models); families whose adapter places no
parameters (GPT-2, unregistered ones) run uncached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._pytree import register_pytree_node

from .components import Component
from .models import Branch, Capture, ModelAdapter, adapter_for


@dataclass(frozen=True)
class Cut:
    """Where a component's chains start computing: block ``start`` (n_layers: the final norm's
    output), with the branch ``constant`` of that block kept at w* (None: the whole block runs)."""

    start: int
    constant: Branch | None = None


@dataclass(frozen=True)
class CachedPrefix:
    """A batch of token ids with the residual stream entering block ``start`` at w* (start == n_layers:
    the final norm's output) and, when ``constant`` is set, that branch's output in block ``start``."""

    input_ids: Tensor
    hidden: Tensor
    start: int
    branch: Tensor | None = None
    constant: Branch | None = None


# A pytree, so that batched chains can stack and vmap it like a tensor (start and constant are static;
# the branch is a leaf only when there is one, since vmap takes no None leaves).
register_pytree_node(CachedPrefix, lambda c: ([c.input_ids, c.hidden, *([c.branch] if c.constant else [])],
                                              (c.start, c.constant)),
                     lambda values, context: CachedPrefix(values[0], values[1], context[0],
                                                          values[2] if context[1] else None, context[1]),
                     serialized_type_name="lit_susc.prefix.CachedPrefix")


def component_cut(model: nn.Module, component: Component) -> Cut | None:
    """Where ``component``'s chains start: its first block (n_layers for the output head alone) and
    the branch of that block it leaves constant; None when nothing can be cached (the embedding, a
    block-0 component touching both branches, a layout the model's adapter does not place)."""
    adapter = adapter_for(model, strict=False)
    places = [adapter.locate(model, name) for name in component]
    if any(place is None for place in places):
        return None
    start = min(place.block for place in places)
    touched = {place.branch for place in places if place.block == start}
    constant: Branch | None = None
    if touched == {"mlp"}:
        constant = "attention"
    elif touched == {"attention"} and adapter.parallel_residual(model):
        constant = "mlp"
    if start == 0 and constant is None:
        return None
    return Cut(start, constant)


class _Constant(nn.Module):
    """A branch module replaced by its stored output, given as (output, None) in place of a module that
    returns a tuple (attention modules return (output, weights))."""

    def __init__(self, value: Tensor, pair: bool) -> None:
        super().__init__()
        self.value, self.pair = value, pair

    def forward(self, *args, **kwargs):
        return (self.value, None) if self.pair else self.value


@contextmanager
def _branch_replaced(adapter: ModelAdapter, block: nn.Module, constant: Branch | None,
                     value: Tensor | None) -> Iterator[None]:
    if constant is None:
        yield
        return
    layout = adapter.branch_layout(constant)
    # a pre-norm feeds only the stored module, so it goes too; a norm on the module's output (norm None) stays
    replaced = {layout.module: _Constant(value, pair=layout.returns_tuple)}
    if layout.norm is not None:
        replaced[layout.norm] = nn.Identity()
    saved = {name: getattr(block, name) for name in replaced}
    for name, module in replaced.items():
        setattr(block, name, module)
    try:
        yield
    finally:
        for name, module in saved.items():
            setattr(block, name, module)


def trunk_hidden(model: nn.Module, batch: Tensor | CachedPrefix) -> Tensor:
    """The final normed hidden state [B, T, H] of a batch of token ids, or of a cached prefix."""
    if not isinstance(batch, CachedPrefix):
        return model.base_model(input_ids=batch, use_cache=False).last_hidden_state
    if batch.start == model.config.num_hidden_layers:
        return batch.hidden
    adapter = adapter_for(model, strict=False)
    with _branch_replaced(adapter, adapter.blocks(model)[batch.start], batch.constant, batch.branch):
        return adapter.run_from(model, batch.hidden, batch.start)


class PrefixCache:
    """The cached prefixes of the current component's cut, within a memory budget.

    ``begin(component)`` at the start of each chain keeps the stored hidden states while the first
    block is the previous component's, and the stored branch outputs while the cut is the same.
    ``view(kind, index, batch)`` returns the batch's ``CachedPrefix`` (computing and storing it when
    the plan allows) or the batch itself.
    """

    KINDS = ("observation", "reference", "sampling")

    def __init__(self, model: nn.Module, budget_bytes: int, counts: dict[str, list[int]]) -> None:
        """``counts[kind]``: token counts (contexts x length) of each batch of that kind, in order."""
        self.model, self.budget = model, budget_bytes
        self.adapter = adapter_for(model, strict=False)
        self.counts = counts
        self.cut: Cut | None = None
        self._hidden: dict[tuple[str, int], Tensor] = {}
        self._branch: dict[tuple[str, int], Tensor] = {}
        self._allowed: set[tuple[str, int]] = set()
        self.plan_bytes = 0

    def plan(self) -> str:
        """Which batches get cached: observation, then reference, then sampling, until the budget is used.
        A batch costs two hidden states per token (the block input and a branch output)."""
        width = 2 * self.model.config.hidden_size * torch.finfo(self.model.dtype).bits // 8
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
        cut = component_cut(self.model, component)
        if cut is None or self.cut is None or cut.start != self.cut.start:
            self._hidden.clear()
        if cut != self.cut:
            self._branch.clear()
        self.cut = cut

    def view(self, kind: str, index: int, batch: Tensor) -> Tensor | CachedPrefix:
        cut = self.cut
        if cut is None:
            return batch
        key, keep = (kind, index), (kind, index) in self._allowed
        hidden = self._hidden.get(key)
        if hidden is None:
            hidden = self._prefix(batch)
            if keep:
                self._hidden[key] = hidden
        branch = None
        if cut.constant is not None:
            branch = self._branch.get(key)
            if branch is None:
                branch = self._branch_output(hidden)
                if keep:
                    self._branch[key] = branch
        return CachedPrefix(input_ids=batch, hidden=hidden, start=cut.start, branch=branch, constant=cut.constant)

    # The blocks below the cut never move during the chain, so computing these at any step equals w*'s.

    @torch.no_grad()
    def _prefix(self, input_ids: Tensor) -> Tensor:
        """The residual stream entering block ``cut.start`` (the final norm's output past the last block)."""
        base = self.model.base_model
        if self.cut.start == self.model.config.num_hidden_layers:
            return base(input_ids=input_ids, use_cache=False).last_hidden_state
        with Capture() as capture:
            capture.input_of(self.adapter.blocks(self.model)[self.cut.start], "hidden", stop=True)
            return capture.run(lambda: base(input_ids=input_ids, use_cache=False))["hidden"]

    @torch.no_grad()
    def _branch_output(self, hidden: Tensor) -> Tensor:
        """The output of block ``cut.start``'s constant branch module (before any norm on its output),
        given the block's input ``hidden``."""
        start, layout = self.cut.start, self.adapter.branch_layout(self.cut.constant)
        with Capture() as capture:
            capture.output_of(getattr(self.adapter.blocks(self.model)[start], layout.module), "branch", stop=True)
            return capture.run(lambda: self.adapter.run_from(self.model, hidden, start, start + 1))["branch"]
