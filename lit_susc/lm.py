"""Susceptibilities of transformers causal LMs: per-token loss, text data, the CLI's module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .components import resolve_components
from .config import SGLDConfig
from .corpus import ContextSet, iter_texts, make_contexts, token_table
from .sampler import SamplingData, SusceptibilitySampler
from .tinylm import TinyLMConfig, load_causal_lm, train_tiny_lm


def per_token_loss(model: nn.Module, input_ids: Tensor, chunk_tokens: int = 512) -> Tensor:
    """l[b, t] = -log p(input_ids[b, t+1] | input_ids[b, :t+1]), shape [B, T-1].

    Runs the trunk, then the output head and the cross-entropy ``chunk_tokens`` positions at a
    time: the [tokens x vocabulary] logits never exist at once, and each chunk's logits are
    still in cache when the cross-entropy reads them (on CPU this makes head + loss cheaper than
    the head alone over all positions).
    """
    hidden = model.base_model(input_ids=input_ids).last_hidden_state
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = input_ids[:, 1:].reshape(-1)
    head = model.get_output_embeddings()
    losses = [F.cross_entropy(head(hidden[i:i + chunk_tokens]).float(), targets[i:i + chunk_tokens], reduction="none")
              for i in range(0, hidden.shape[0], chunk_tokens)]
    return torch.cat(losses).view(input_ids.shape[0], -1)


@dataclass
class TextDataConfig:
    """Where the tokens come from and how they are cut (contexts are disjoint between roles)."""

    source: str = "stdlib"
    """'stdlib' (this interpreter's standard-library sources), a .txt/.jsonl file, a directory of
    .txt files, or a HuggingFace dataset name."""
    split: str = "train"
    """Dataset split (HF datasets only)."""
    text_column: str = "text"
    """Text field (HF datasets and .jsonl)."""
    context_length: int = 128
    """Tokens per context; each context observes context_length - 1 predicted tokens."""
    observation_contexts: int = 32
    """Contexts whose per-token losses are observed (chi's columns), taken first from the source."""
    sampling_contexts: int = 256
    """Contexts for SGLD minibatches, taken after the observation contexts."""
    batch_size: int = 8
    """Contexts per SGLD minibatch (the first minibatch is the reference batch)."""
    observation_batch_size: int = 32
    """Contexts per forward pass of the observation set."""
    max_documents: int | None = None
    """Read at most this many documents (None: as many as the contexts need)."""

    def __post_init__(self) -> None:
        for name in ("context_length", "observation_contexts", "sampling_contexts", "batch_size",
                     "observation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")


def _batches(ids: Tensor, size: int) -> list[Tensor]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


class LMSusceptibilities(SusceptibilitySampler):
    """The ``sample`` subcommand's module: a causal LM, text data, components by glob pattern.

    Args:
        pretrained: a transformers model name or local path (e.g. ``EleutherAI/pythia-14m``);
            None trains the offline quickstart model described by ``tiny_lm`` (cached in the
            output directory).
        revision: hub revision, e.g. a Pythia training checkpoint ``step1000``.
        trust_remote_code: allow model code from the hub (off unless a config turns it on).
        components: glob patterns over ``layers.{l}.heads.{h}``, ``layers.{l}.mlp``, ``embed``,
            ``unembed``; ``["*"]`` is every component.
        data: text source and context layout.
        sgld: sampler settings and chi convention.
        output_dir: the run directory (resumable; refuses another run's results).
        shard_tokens: observation tokens per chi shard on disk.
        tiny_lm: the offline model's recipe, used when ``pretrained`` is None.
    """

    def __init__(self, pretrained: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
                 components: Sequence[str] = ("*",),
                 data: TextDataConfig | None = None, sgld: SGLDConfig | None = None,
                 output_dir: str = "runs/sample", shard_tokens: int = 1 << 20,
                 tiny_lm: TinyLMConfig | None = None) -> None:
        data = data or TextDataConfig()
        sgld = sgld or SGLDConfig()
        run_dir = Path(output_dir)
        if pretrained is None:
            pretrained = str(train_tiny_lm(run_dir / "tiny_lm", tiny_lm or TinyLMConfig(), source=data.source))
        model, tokenizer = load_causal_lm(pretrained, revision=revision, trust_remote_code=trust_remote_code)
        max_len = getattr(model.config, "max_position_embeddings", None)
        if max_len is not None and data.context_length > max_len:
            raise ValueError(f"data.context_length={data.context_length} is longer than the model accepts "
                             f"(max_position_embeddings={max_len}); lower data.context_length")
        observation = self._contexts(tokenizer, data, data.observation_contexts, skip=0)
        sampling = self._contexts(tokenizer, data, data.sampling_contexts, skip=len(observation))
        self.tokens = token_table(observation, tokenizer)
        self.model_identity = {"pretrained": pretrained, "revision": revision,
                               "model_config": model.config.to_diff_dict()}
        self.data_config = data
        super().__init__(
            model=model, loss_fn=per_token_loss,
            components=resolve_components(model, list(components)),
            data=SamplingData(sampling=_batches(sampling.input_ids, data.batch_size),
                              observation=_batches(observation.input_ids, data.observation_batch_size),
                              reference=sampling.input_ids[:data.batch_size]),
            sgld=sgld, run_dir=run_dir,
        )
        self.shard_tokens = shard_tokens

    @staticmethod
    def _contexts(tokenizer, data: TextDataConfig, n: int, skip: int) -> ContextSet:
        docs = iter_texts(data.source, split=data.split, text_column=data.text_column,
                          max_documents=data.max_documents, streaming=True)
        contexts = make_contexts(tokenizer, docs, data.context_length, max_contexts=n, skip_contexts=skip)
        if len(contexts) < n:
            raise ValueError(f"data source {data.source!r} yields only {len(contexts)} contexts of "
                             f"{data.context_length} tokens after skipping {skip}, {n} asked; use more data, "
                             "fewer contexts or a shorter context_length")
        return contexts

    def describe(self) -> dict:
        return {"model": self.model_identity, "data": asdict(self.data_config)}
