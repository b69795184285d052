"""The model-adapter interface: what lit-susc must know about one family of transformers causal LMs.

lit-susc names no model's parameters or modules itself. Whatever depends on a family's layout it
asks of the family's ``ModelAdapter`` (found by ``config.model_type``: lit_susc.models.adapter_for):

- ``components``: the built-in components (lit_susc.components selects from them),
- ``blocks``: the ModuleList of transformer blocks (residual features, the prefix cache),
- ``locate``, ``parallel_residual``, ``branch_layout`` and ``run_from``: what the prefix cache
  needs to start a chain's forward pass at its component's first block (lit_susc.prefix).

A family is one module ``lit_susc/models/<family>.py`` holding a subclass, plus one
``register_adapter`` line. Only ``components`` must be written. The defaults of the rest suit
any model: they find the blocks by shape and cache nothing, so every chain runs the full model.
A family gets prefix caching by overriding ``locate``, ``parallel_residual``, ``branch_layout`` and
``run_from`` together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..components import Component

Branch = Literal["attention", "mlp"]
"""One of the two branches that a block adds to the residual stream."""


@dataclass(frozen=True)
class Place:
    """Where a parameter lives, as the prefix cache sees it: in block ``block`` (n_layers: the output
    head, after the final norm), inside the module of that block's branch ``branch`` (None: elsewhere
    in the block, a layer norm say, which the cache treats as touching the whole block)."""

    block: int
    branch: Branch | None = None


@dataclass(frozen=True)
class BranchLayout:
    """The modules that make up a branch of a block, as attribute names of the block: the branch
    adds ``module(norm(h))`` to the residual stream. ``returns_tuple``: the module returns
    (output, ...) rather than the output alone (attention modules return their weights too).

    ``norm`` None: the branch reads h itself, and the family normalises the module's output instead
    (OLMo 2: ``post_norm(module(h))``). The prefix cache stores ``module``'s output either way; a
    pre-norm is bypassed with the module, a norm on the output stays and acts on the stored output.
    """

    norm: str | None
    module: str
    returns_tuple: bool


class ModelAdapter:
    """What lit-susc knows about one model family; a subclass per family, registered by model type.

    The methods hold no state (they are given the model, a transformers causal LM of the family,
    where they need it), so one instance serves every model of the family.
    """

    def components(self, model: nn.Module) -> dict[str, Component]:
        """Every built-in component of ``model``, in layer order. Required.

        Names follow one scheme across families: ``layers.{l}.heads.{h}``, ``layers.{l}.kv.{g}``
        (key/value groups, lit_susc.models.llama), ``layers.{l}.mlp``, ``embed``, ``unembed`` (and
        family extras such as GPT-2's ``pos_embed``).
        """
        raise NotImplementedError(f"{type(self).__name__} has no built-in components")

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The transformer blocks of ``model`` in order.

        Default: the ModuleList of ``num_hidden_layers`` modules directly under the base model,
        which GPT-NeoX, GPT-2, Llama-style and similar layouts all have.
        """
        n_layers = model.config.num_hidden_layers
        for module in model.base_model.children():
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                return module
        raise ValueError(f"{type(model).__name__} has no list of {n_layers} blocks directly under its base model; "
                         "register a ModelAdapter for its model type (lit_susc.models.register_adapter) that says "
                         "where its blocks are")

    def locate(self, model: nn.Module, name: str) -> Place | None:
        """Where parameter ``name`` lives, or None when a chain moving it must run the full model.

        Default: None for every parameter (no prefix caching).
        """
        return None

    def parallel_residual(self, model: nn.Module) -> bool:
        """Whether a block computes h + attn(ln1(h)) + mlp(ln2(h)), both branches reading its input h,
        rather than the sequential a = h + attn(ln1(h)), a + mlp(ln2(a))."""
        return False

    def branch_layout(self, branch: Branch) -> BranchLayout:
        """The norm and module of ``branch`` in a block. Needed once ``locate`` places parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no branch layout")

    def run_from(self, model: nn.Module, hidden: Tensor, start: int, stop: int | None = None) -> Tensor:
        """The base model's own forward pass over blocks ``start .. stop - 1`` (stop None: to the last
        block) with ``hidden`` entering block ``start``: its ``last_hidden_state``, the final norm of
        the last block's output. Needed once ``locate`` places parameters."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a model from a block")


def slice_mask(shape: tuple[int, ...], ranges: Sequence[tuple[int, int]], dim: int = 0) -> Tensor:
    """A bool mask of ``shape`` selecting the index ranges [lo, hi) along ``dim``.

    A stride-0 view of one vector, so a component's masks cost one vector each, whatever the size
    of the parameter (and need only its shape: discovery works on a model on the meta device).
    """
    line = torch.zeros(shape[dim], dtype=torch.bool)
    for lo, hi in ranges:
        line[lo:hi] = True
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return line.view(view).expand(shape)
