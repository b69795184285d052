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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from ..models import Capture, adapter_for
from ..rundir import json_digest, weights_digest

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


class ResidualFeatures(nn.Module):
    """``features(input_ids) -> [B, T, len(layers) * hidden_size]``, stopping after the deepest layer.

    Hooks on the blocks (the model family's, lit_susc.models; found by shape for an unregistered
    family) capture the residual stream; the deepest one ends the forward pass
    (lit_susc.models.capture), so no later block, final norm or output head runs.
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
        blocks = adapter_for(model, strict=False).blocks(model)
        deepest = max(layers)
        self._capture = Capture()
        for layer in set(layers):
            if layer == 0:
                self._capture.input_of(blocks[0], 0, stop=deepest == 0)
            else:
                self._capture.output_of(blocks[layer - 1], layer, stop=layer == deepest)

    def remove(self) -> None:
        """Take the hooks off the model (it runs whole again)."""
        self._capture.remove()

    @property
    def n_features(self) -> int:
        return len(self.layers) * self.hidden_size

    def forward(self, input_ids: Tensor) -> Tensor:
        captured = self._capture.run(lambda: self.model.base_model(input_ids=input_ids, use_cache=False))
        return torch.cat([captured[layer] for layer in self.layers], dim=-1)


def config_hash(model_config: dict) -> str:
    """Digest of a model config dict (``config.to_diff_dict()``), volatile keys left out."""
    return json_digest({k: v for k, v in model_config.items() if k not in _VOLATILE_CONFIG_KEYS})


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
