"""Susceptibilities and BIFs of transformers causal LMs: per-token loss, text data, the CLI's modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .components import resolve_components
from .config import ComputeConfig, SGLDConfig, check_number
from .corpus import ContextSet, iter_texts, make_contexts, token_table
from .prefix import CachedPrefix, trunk_hidden
from .sampler import SamplingData, SusceptibilitySampler
from .tinylm import TinyLMConfig, load_causal_lm, train_tiny_lm


def per_token_loss(model: nn.Module, batch: Tensor | CachedPrefix, chunk_tokens: int = 512) -> Tensor:
    """l[b, t] = -log p(input_ids[b, t+1] | input_ids[b, :t+1]), shape [B, T-1].

    ``batch`` is token ids [B, T] or a ``CachedPrefix`` of them (the blocks below its start are
    not run again; lit_susc.prefix). Runs the trunk, then the output head and the cross-entropy
    ``chunk_tokens`` positions at a time: the [tokens x vocabulary] logits never exist at once,
    and each chunk's logits are still in cache when the cross-entropy reads them (on CPU this
    makes head + loss cheaper than the head alone over all positions).
    """
    input_ids = batch.input_ids if isinstance(batch, CachedPrefix) else batch
    hidden = trunk_hidden(model, batch)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = input_ids[:, 1:].reshape(-1)
    head = model.get_output_embeddings()
    losses = [F.cross_entropy(head(hidden[i:i + chunk_tokens]).float(), targets[i:i + chunk_tokens], reduction="none")
              for i in range(0, hidden.shape[0], chunk_tokens)]
    return torch.cat(losses).view(input_ids.shape[0], -1)


per_token_loss.accepts_cached_prefix = True


@dataclass
class TextSource:
    """Where the tokens come from and how they are cut into contexts."""

    source: str = "stdlib"
    """'stdlib' (this interpreter's standard-library sources), a .txt/.jsonl file, a directory of
    .txt files, or a HuggingFace dataset name."""
    split: str = "train"
    """Dataset split (HF datasets only)."""
    text_column: str = "text"
    """Text field (HF datasets and .jsonl)."""
    context_length: int = 128
    """Tokens per context; each context observes context_length - 1 predicted tokens."""
    max_documents: int | None = None
    """Read at most this many documents (None: as many as the contexts need)."""
    contexts_per_document: int | None = None
    """Take at most this many contexts from each document (None: all), so that a fixed number of
    contexts spans more documents (the stdlib's long files otherwise fill the observation set)."""

    def _check_ranges(self, *names: str) -> None:
        """Raise ValueError naming the first field outside its range (before anything is loaded or written)."""
        check_number("data.context_length", self.context_length, low=2, integer=True,
                     why="a context of n tokens observes n - 1 predicted tokens")
        for name in ("max_documents", "contexts_per_document"):
            check_number(f"data.{name}", getattr(self, name), low=1, integer=True, optional=True)
        for name in names:
            check_number(f"data.{name}", getattr(self, name), low=1, integer=True)


@dataclass
class TextDataConfig(TextSource):
    """The data of a susceptibility run (contexts are disjoint between roles)."""

    observation_contexts: int = 32
    """Contexts whose per-token losses are observed (chi's columns), taken first from the source."""
    sampling_contexts: int = 256
    """Contexts for SGLD minibatches, taken after the observation contexts."""
    batch_size: int = 8
    """Contexts per SGLD minibatch (the first minibatch is the reference batch)."""
    observation_batch_size: int = 32
    """Contexts per forward pass of the observation set."""

    def __post_init__(self) -> None:
        self._check_ranges("observation_contexts", "sampling_contexts", "batch_size", "observation_batch_size")


@dataclass
class InfluenceDataConfig(TextSource):
    """The data of a BIF run: the posterior's data, the training samples z_i in it, and the queries."""

    sampling_contexts: int = 256
    """Contexts the posterior is conditioned on (SGLD minibatches), taken first from the source."""
    train_contexts: int = 32
    """Training samples z_i: the first train_contexts of the sampling contexts (BIF's rows)."""
    query_contexts: int = 8
    """Query contexts q (BIF's columns)."""
    query_source: str | None = None
    """Where the queries come from (same forms as ``source``); None: ``source``, after the sampling contexts."""
    granularity: Literal["sample", "token"] = "sample"
    """'sample': one loss per context (mean over its tokens); 'token': one per predicted token."""
    batch_size: int = 8
    """Contexts per SGLD minibatch (the first minibatch is the reference batch)."""
    observation_batch_size: int = 32
    """Contexts per forward pass of the training samples and queries."""

    def __post_init__(self) -> None:
        self._check_ranges("sampling_contexts", "train_contexts", "query_contexts", "batch_size",
                             "observation_batch_size")
        if self.train_contexts > self.sampling_contexts:
            raise ValueError(f"data.train_contexts={self.train_contexts} exceeds data.sampling_contexts="
                             f"{self.sampling_contexts}: the training samples are part of the posterior's data")
        if self.granularity not in ("sample", "token"):
            raise ValueError(f"data.granularity must be 'sample' or 'token', got {self.granularity!r}")


def per_sample_loss(model: nn.Module, batch: Tensor | CachedPrefix) -> Tensor:
    """l[b] = mean over t of per_token_loss[b, t]: one loss per context, shape [B]."""
    return per_token_loss(model, batch).mean(dim=-1)


per_sample_loss.accepts_cached_prefix = True


def load_lm(pretrained: str | None, revision: str | None, trust_remote_code: bool, tiny_lm: TinyLMConfig | None,
            run_dir: Path, data: TextSource):
    """(model, tokenizer, identity) of a hub name or local path, or of the offline model trained on ``data``."""
    if pretrained is None:
        pretrained = str(train_tiny_lm(run_dir / "tiny_lm", tiny_lm or TinyLMConfig(), source=data.source))
    model, tokenizer = load_causal_lm(pretrained, revision=revision, trust_remote_code=trust_remote_code)
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len is not None and data.context_length > max_len:
        raise ValueError(f"data.context_length={data.context_length} is longer than the model accepts "
                         f"(max_position_embeddings={max_len}); lower data.context_length")
    identity = {"pretrained": pretrained, "revision": revision, "model_config": model.config.to_diff_dict()}
    return model, tokenizer, identity


def text_contexts(tokenizer, data: TextSource, n: int, skip: int, source: str | None = None) -> ContextSet:
    """``n`` contexts of ``data.context_length`` tokens from ``source`` (default ``data.source``) after ``skip``."""
    source = source or data.source
    docs = iter_texts(source, split=data.split, text_column=data.text_column,
                      max_documents=data.max_documents, streaming=True)
    contexts = make_contexts(tokenizer, docs, data.context_length, max_contexts=n, skip_contexts=skip,
                             contexts_per_document=data.contexts_per_document)
    if len(contexts) < n:
        raise ValueError(f"data source {source!r} yields only {len(contexts)} contexts of "
                         f"{data.context_length} tokens after skipping {skip}, {n} asked; use more data, "
                         "fewer contexts or a shorter context_length")
    return contexts


def _batches(ids: Tensor, size: int) -> list[Tensor]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


class LMSusceptibilities(SusceptibilitySampler):
    """A sampler over a causal LM's text contexts, carrying what its outputs record about them
    (built from a config by ``lm_susceptibilities``)."""

    def __init__(self, tokens: pa.Table, description: dict, shard_tokens: int, **sampler: Any) -> None:
        super().__init__(**sampler)
        self.tokens, self.description, self.shard_tokens = tokens, description, shard_tokens

    def describe(self) -> dict:
        return self.description


def lm_susceptibilities(pretrained: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
                        components: Sequence[str] = ("*",),
                        data: TextDataConfig | None = None, sgld: SGLDConfig | None = None,
                        output_dir: str = "runs/sample", shard_tokens: int = 1 << 20,
                        tiny_lm: TinyLMConfig | None = None, compute: ComputeConfig | None = None) -> LMSusceptibilities:
    """The ``sample`` subcommand's module: loads the model (training the offline one when
    ``pretrained`` is None), cuts the text into observation and sampling contexts, and resolves
    the components.

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
        compute: memory budget, prefix caching and observation precision (never the estimate).
    """
    # Before the model is loaded (or trained): a bad value must not cost a run's sampling.
    check_number("shard_tokens", shard_tokens, low=1, integer=True, why="observation tokens per chi shard")
    data = data or TextDataConfig()
    run_dir = Path(output_dir)
    model, tokenizer, identity = load_lm(pretrained, revision, trust_remote_code, tiny_lm, run_dir, data)
    observation = text_contexts(tokenizer, data, data.observation_contexts, skip=0)
    sampling = text_contexts(tokenizer, data, data.sampling_contexts, skip=len(observation))
    return LMSusceptibilities(
        token_table(observation, tokenizer), {"model": identity, "data": asdict(data)}, shard_tokens,
        model=model, loss_fn=per_token_loss, components=resolve_components(model, list(components)),
        data=SamplingData(sampling=_batches(sampling.input_ids, data.batch_size),
                          observation=_batches(observation.input_ids, data.observation_batch_size),
                          reference=sampling.input_ids[:data.batch_size]),
        sgld=sgld or SGLDConfig(), run_dir=run_dir, compute=compute,
    )


def sample_table(contexts: ContextSet, tokenizer) -> pa.Table:
    """One row per context: doc_id, document, position (of its first token), text."""
    doc_id = contexts.doc_index.numpy()
    return pa.table({
        "doc_id": pa.array(doc_id, pa.int64()),
        "document": pa.array(contexts.documents, pa.string()).take(pa.array(doc_id)),
        "position": pa.array(contexts.start.numpy(), pa.int64()),
        "text": pa.array(tokenizer.batch_decode(contexts.input_ids.tolist(), clean_up_tokenization_spaces=False)),
    })


def token_text_table(contexts: ContextSet, tokenizer, left: int = 24, right: int = 6) -> pa.Table:
    """``token_table`` plus ``text``: each predicted token in its context, marked as [[token]]."""
    table = token_table(contexts, tokenizer)
    decode = lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    texts = []
    for ids in contexts.input_ids.tolist():
        for t in range(1, len(ids)):
            texts.append(f"{decode(ids[max(0, t - left):t])}[[{decode(ids[t:t + 1])}]]{decode(ids[t + 1:t + 1 + right])}")
    return table.append_column("text", pa.array(texts, pa.string()))


class LMInfluence(SusceptibilitySampler):
    """A BIF sampler over a causal LM's training samples and queries, carrying their texts
    (built from a config by ``lm_influence``)."""

    def __init__(self, train_table: pa.Table, query_table: pa.Table, description: dict, granularity: str,
                 top_k: int, **sampler: Any) -> None:
        super().__init__(**sampler)
        self.train_table, self.query_table, self.description = train_table, query_table, description
        self.n_train, self.granularity, self.top_k = train_table.num_rows, granularity, top_k

    def describe(self) -> dict:
        return self.description


def lm_influence(pretrained: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
                 components: Sequence[str] | None = None, data: InfluenceDataConfig | None = None,
                 sgld: SGLDConfig | None = None, output_dir: str = "runs/bif", top_k: int = 10,
                 tiny_lm: TinyLMConfig | None = None, compute: ComputeConfig | None = None) -> LMInfluence:
    """The ``bif`` subcommand's module: Bayesian influence functions of a causal LM's training samples
    on queries, BIF(z_i, q) = -Cov(l_i, l_q) under the localized posterior (design.md section 2).
    Loads the model, cuts the posterior's data, the training samples and the queries into contexts.

    Args:
        pretrained, revision, trust_remote_code, tiny_lm: the model, as for ``sample``.
        components: None samples the whole model (one BIF matrix); glob patterns over
            ``layers.{l}.heads.{h}``, ``layers.{l}.mlp``, ``embed``, ``unembed`` give one matrix per
            component, each from chains restricted to it.
        data: the posterior's data, the training samples, the queries, the granularity.
        sgld: sampler settings.
        output_dir: the run directory (resumable; refuses another run's results).
        top_k: most influential training samples listed per query.
        compute: memory budget, prefix caching and observation precision (never the estimate).
    """
    check_number("top_k", top_k, low=1, integer=True, why="training samples listed per query")
    data = data or InfluenceDataConfig()
    run_dir = Path(output_dir)
    model, tokenizer, identity = load_lm(pretrained, revision, trust_remote_code, tiny_lm, run_dir, data)
    sampling = text_contexts(tokenizer, data, data.sampling_contexts, skip=0)
    query = text_contexts(tokenizer, data, data.query_contexts, source=data.query_source,
                          skip=0 if data.query_source else data.sampling_contexts)
    train = ContextSet(input_ids=sampling.input_ids[:data.train_contexts],
                       doc_index=sampling.doc_index[:data.train_contexts],
                       start=sampling.start[:data.train_contexts], documents=sampling.documents)
    table = sample_table if data.granularity == "sample" else token_text_table
    batches = lambda ids: _batches(ids, data.observation_batch_size)
    return LMInfluence(
        table(train, tokenizer), table(query, tokenizer), {"model": identity, "data": asdict(data)},
        data.granularity, top_k,
        model=model, loss_fn=per_sample_loss if data.granularity == "sample" else per_token_loss,
        components=resolve_components(model, None if components is None else list(components)),
        data=SamplingData(sampling=_batches(sampling.input_ids, data.batch_size),
                          observation=batches(train.input_ids) + batches(query.input_ids),
                          reference=sampling.input_ids[:data.batch_size]),
        sgld=sgld or SGLDConfig(), run_dir=run_dir, compute=compute,
    )
