"""Residual-stream features of a causal LM, from a forward pass that stops at the deepest layer used.

Layer indices follow ``output_hidden_states``: index 0 is the embedding output (the input of
block 0) and index l >= 1 is the output of block l - 1. Unlike ``output_hidden_states``, index
n_layers is the last block's output *before* the final norm: the final norm's output is never a
feature. The features of a token are the residual streams at the token's own position, the only
position whose activations see both its context and the token itself (what its loss depends on),
concatenated over the layers in the order given:

    features[c, t] = concat_l h_l[c, t]        (shape [len(layers) * hidden_size])

A token row (c, t) of a susceptibility run (t = 1..T-1) gets ``features[c, t]``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

# Config keys that change with the library or the loading call, not with the model.
_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path", "dtype", "torch_dtype", "use_cache"})
ALIGNMENT_COLUMNS = ("document", "position", "token_id")


def feature_layers(n_layers: int, count: int = 4) -> list[int]:
    """``count`` evenly spaced intermediate layers: l_i = floor(i * n_layers / (count + 1) + 1/2), i = 1..count.

    They lie strictly between the embeddings and the last block's output. A model with no more
    than ``count`` blocks has fewer intermediate layers than asked: all its block outputs
    1..n_layers are used instead.
    """
    if count < 1:
        raise ValueError(f"feature layer count must be >= 1, got {count}")
    if count >= n_layers:
        return list(range(1, n_layers + 1))
    return [int(i * n_layers / (count + 1) + 0.5) for i in range(1, count + 1)]


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a transformers causal LM: its ModuleList of num_hidden_layers modules."""
    n_layers = model.config.num_hidden_layers
    for module in model.base_model.children():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"{type(model).__name__} has no list of {n_layers} blocks directly under its base model; "
                     "residual features support GPT-NeoX, GPT-2, Llama-style and similar layouts")


class _Stop(Exception):
    """Raised by the hook of the deepest layer used: the rest of the forward pass is skipped."""


class ResidualFeatures(nn.Module):
    """``features(input_ids) -> [B, T, len(layers) * hidden_size]``, stopping after the deepest layer.

    Hooks on the blocks capture the residual stream; the deepest one raises to end the forward
    pass, so no later block, final norm or output head runs.
    """

    def __init__(self, model: nn.Module, layers: list[int]) -> None:
        super().__init__()
        n_layers = model.config.num_hidden_layers
        if not layers or any(not 0 <= layer <= n_layers for layer in layers):
            raise ValueError(f"feature layers must be a non-empty list of indices in 0..{n_layers} (0 = embeddings, "
                             f"l = output of block l-1); got {layers}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"feature layers must not repeat, got {layers}")
        self.model = model
        self.layers = list(layers)
        self.hidden_size = model.config.hidden_size
        self._captured: dict[int, Tensor] = {}
        blocks = decoder_blocks(model)
        deepest = max(layers)
        self._handles = []
        for layer in set(layers):
            if layer == 0:
                self._handles.append(blocks[0].register_forward_pre_hook(self._capture_input(deepest == 0),
                                                                         with_kwargs=True))
            else:
                self._handles.append(blocks[layer - 1].register_forward_hook(self._capture_output(layer, layer == deepest)))

    def remove(self) -> None:
        """Take the hooks off the model (it runs whole again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def n_features(self) -> int:
        return len(self.layers) * self.hidden_size

    def _capture_input(self, stop: bool):
        def hook(module, args, kwargs):
            self._captured[0] = args[0] if args else kwargs["hidden_states"]
            if stop:
                raise _Stop
        return hook

    def _capture_output(self, layer: int, stop: bool):
        def hook(module, args, output):
            self._captured[layer] = output[0] if isinstance(output, tuple) else output
            if stop:
                raise _Stop
        return hook

    def forward(self, input_ids: Tensor) -> Tensor:
        self._captured.clear()
        try:
            self.model.base_model(input_ids=input_ids, use_cache=False)
        except _Stop:
            pass
        features = torch.cat([self._captured[layer] for layer in self.layers], dim=-1)
        self._captured.clear()
        return features


def config_hash(model_config: dict) -> str:
    """sha256 (16 hex digits) of a model config dict (``config.to_diff_dict()``), volatile keys left out."""
    stable = {k: v for k, v in model_config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_digest(model: nn.Module) -> str:
    """sha256 (16 hex digits) of every parameter's name, shape, sum and sum of squares (float64)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        p64 = p.detach().double()
        h.update(f"{name}:{tuple(p.shape)}:{p64.sum().item():.12e}:{p64.square().sum().item():.12e}".encode())
    return h.hexdigest()[:16]


def model_identity(pretrained: str, revision: str | None, model: nn.Module) -> dict:
    """What identifies a base model: name, revision, config hash and weights digest."""
    return {"pretrained": pretrained, "revision": revision, "config_hash": config_hash(model.config.to_diff_dict()),
            "weights": weights_digest(model)}


def check_alignment(expected: pa.Table, actual: pa.Table, what: str) -> None:
    """Raise ValueError unless the two token tables agree on document, position and token_id, row by row."""
    if expected.num_rows != actual.num_rows:
        raise ValueError(f"{what}: {actual.num_rows} tokens, but the susceptibility run has {expected.num_rows}; "
                         "activations and targets must describe the same tokens")
    for column in ALIGNMENT_COLUMNS:
        a, b = expected.column(column), actual.column(column).cast(expected.schema.field(column).type)
        if not a.equals(b):
            row = int(np.argmax(pc.not_equal(a, b).to_numpy(zero_copy_only=False)))
            raise ValueError(f"{what}: token {row} has {column}={b[row].as_py()!r}, but the susceptibility run has "
                             f"{a[row].as_py()!r}; activations and targets must describe the same tokens (same data "
                             "source, tokenizer and context layout)")


def check_same_model(expected: dict, actual: dict, what: str) -> None:
    """Raise ValueError unless ``actual`` is the base model ``expected`` describes.

    With weights digests on both sides, the config hash and the weights decide (a local copy of a
    hub model passes); otherwise name, revision and config hash must all agree.
    """
    keys = ["config_hash", "weights"] if "weights" in expected and "weights" in actual else [
        "pretrained", "revision", "config_hash"]
    differ = [k for k in keys if expected.get(k) != actual.get(k)]
    if differ:
        raise ValueError(f"{what}: the base model {actual['pretrained']!r} (revision {actual['revision']}) is not the "
                         f"one expected, {expected['pretrained']!r} (revision {expected['revision']}): they differ in "
                         f"{', '.join(differ)} ({', '.join(f'{expected.get(k)} != {actual.get(k)}' for k in differ)}); "
                         "use the base model the susceptibilities were computed on")
