"""``aux predict``: stream any number of tokens through the base model and the aux model.

The text is cut into contexts exactly as for sampling (``corpus.make_contexts``: each document
split from its start into non-overlapping contexts, the remainder dropped), numbered in stream
order; shard s holds contexts [s * shard_contexts, (s + 1) * shard_contexts). Rank r of a world
of W processes predicts the shards with s % W == r; every rank reads (and tokenizes) the whole
stream, so the numbering needs no communication. Output directory::

    chi/shard-XXXXX.safetensors     "chi" [n_components, tokens] float32: predictions in component space
    pcs/shard-XXXXX.safetensors     "pcs" [n_pcs, tokens] float32: predicted PC scores
    tokens/shard-XXXXX.parquet      the shard's token table (same columns as a run's tokens.parquet;
                                    doc_id and context count over the whole stream)
    pca.safetensors                 the aux model's PC basis (whitened = pcs / sqrt(variances))
    predict.json                    what was predicted: aux model, data, layout (resume identity)
    result.json                     components, convention, nbeta, shard index, "source": "aux", and
                                    the ground truth's mean_se_sq (mean chi_se^2 per component)
    summary.json                    written last

Each shard's files are written to a temporary name and renamed, the token table last: a shard
with a token table is finished, and a restarted run skips it (its contexts are tokenized again,
but not run through the models). Memory holds one shard per rank.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from ..corpus import ContextSet, Document, encode_texts, iter_texts, token_table
from ..result import read_metadata, shard_remedy
from ..rundir import (
    claim,
    copy_file,
    file_digest,
    mark_finished,
    read_shards,
    read_token_table,
    reading,
    remove_temporaries,
    shard_name,
    stage_remedy,
    verify,
    write_json,
    write_parquet,
    write_shard,
)
from ..tinylm import load_causal_lm
from .bundle import META_FILE, NORMALIZATION_FILE, PCA_FILE, WEIGHTS_FILE, AuxBundle
from .features import ResidualFeatures, check_same_model, model_identity
from .pca import PCABasis

# Documents are tokenized in groups of about this many characters: large enough for the batch
# encoder's parallelism, small enough that little is tokenized past max_contexts.
_ENCODE_BATCH_CHARS = 1 << 18
PREDICT_FILE = "predict.json"


@dataclass
class StreamConfig:
    """The text to predict susceptibilities for, and how it is cut, batched and sharded."""

    source: str = "stdlib"
    """'stdlib', a .txt/.jsonl file, a directory of .txt files, or a HuggingFace dataset name."""
    split: str = "train"
    """Dataset split (HF datasets only)."""
    text_column: str = "text"
    """Text field (HF datasets and .jsonl)."""
    streaming: bool = True
    """Stream a HF dataset instead of downloading it first."""
    max_documents: int | None = None
    """Read at most this many documents (None: all)."""
    max_contexts: int | None = None
    """Predict at most this many contexts (None: the whole source)."""
    contexts_per_document: int | None = None
    """Take at most this many contexts from each document (None: all), as in the sample's data."""
    context_length: int | None = None
    """Tokens per context (None: the susceptibility run's)."""
    batch_size: int = 32
    """Contexts per forward pass."""
    shard_contexts: int = 1024
    """Contexts per output shard: the unit of resumption and of memory."""
    prefetch: bool = True
    """Read and tokenize the stream in a DataLoader worker process, ahead of the models."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_contexts", "max_contexts", "max_documents", "context_length",
                     "contexts_per_document"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")


@dataclass
class ContextShard:
    """Consecutive contexts of the stream."""

    index: int
    """Shard number s."""
    first_context: int
    """Stream index of the shard's first context."""
    input_ids: Tensor
    """[n, T] int64."""
    doc_id: Tensor
    """[n] int64: stream index of each context's document."""
    start: Tensor
    """[n] int64: position of each context's first token in its document."""
    documents: list[str]
    """[n] name of each context's document."""


def _text_groups(documents: Iterator[Document]) -> Iterator[list[Document]]:
    group, chars = [], 0
    for doc in documents:
        group.append(doc)
        chars += len(doc.text)
        if chars >= _ENCODE_BATCH_CHARS:
            yield group
            group, chars = [], 0
    if group:
        yield group


def _iter_contexts(tokenizer, documents: Iterator[Document], context_length: int, per_document: int | None = None):
    """(token ids [T], document index, start position, document name) of every context, in stream order."""
    doc_id = 0
    for batch in _text_groups(documents):
        for doc, ids in zip(batch, encode_texts(tokenizer, [d.text for d in batch])):
            starts = range(0, len(ids) - context_length + 1, context_length)
            for start in starts if per_document is None else starts[:per_document]:
                yield ids[start:start + context_length], doc_id, start, doc.name
            doc_id += 1


def iter_context_shards(tokenizer, documents: Iterator[Document], context_length: int, shard_contexts: int,
                        max_contexts: int | None = None, per_document: int | None = None) -> Iterator[ContextShard]:
    """Cut the documents into contexts like ``make_contexts`` and group them into shards, lazily."""
    contexts = itertools.islice(_iter_contexts(tokenizer, documents, context_length, per_document), max_contexts)
    for index in itertools.count():
        group = list(itertools.islice(contexts, shard_contexts))
        if not group:
            return
        ids, doc_ids, starts, names = zip(*group)
        yield ContextShard(index=index, first_context=index * shard_contexts,
                           input_ids=torch.tensor(np.array(ids, dtype=np.int64)), doc_id=torch.tensor(doc_ids),
                           start=torch.tensor(starts), documents=list(names))


class ContextBatches(IterableDataset):
    """Batches of the shards that rank ``rank`` of ``world`` predicts and that are not finished yet.

    Each batch is a dict: input_ids [B, T], shard, last (the shard's last batch), context (stream
    index of the first context), doc_id, start, documents (lists of B). The stream ends with the
    marker ``{"n_shards": number of shards in the whole stream}``, which reaches the main process
    even when a worker process reads the stream.
    """

    def __init__(self, tokenizer, data: StreamConfig, context_length: int, rank: int = 0, world: int = 1,
                 finished: frozenset[int] = frozenset()) -> None:
        self.tokenizer, self.data, self.context_length = tokenizer, data, context_length
        self.rank, self.world, self.finished = rank, world, finished

    def __iter__(self) -> Iterator[dict]:
        data, size = self.data, self.data.batch_size
        docs = iter_texts(data.source, split=data.split, text_column=data.text_column,
                          max_documents=data.max_documents, streaming=data.streaming)
        n_shards = 0
        for shard in iter_context_shards(self.tokenizer, docs, self.context_length, data.shard_contexts,
                                         data.max_contexts, data.contexts_per_document):
            n_shards = shard.index + 1
            if shard.index % self.world != self.rank or shard.index in self.finished:
                continue
            n = len(shard.input_ids)
            for a in range(0, n, size):
                yield {"input_ids": shard.input_ids[a:a + size], "shard": shard.index, "last": a + size >= n,
                       "context": shard.first_context + a, "doc_id": shard.doc_id[a:a + size].tolist(),
                       "start": shard.start[a:a + size].tolist(), "documents": shard.documents[a:a + size]}
        yield {"n_shards": n_shards}


class _StreamData(L.LightningDataModule):
    """The stream for this rank: ranks are known only once the Trainer has set up its strategy."""

    def __init__(self, tokenizer, data: StreamConfig, context_length: int, finished: frozenset[int]) -> None:
        super().__init__()
        self.dataset = ContextBatches(tokenizer, data, context_length, finished=finished)

    def setup(self, stage: str) -> None:
        self.dataset.rank, self.dataset.world = self.trainer.global_rank, self.trainer.world_size

    def predict_dataloader(self) -> DataLoader:
        # One worker at most: each worker of an iterable dataset would yield the whole stream.
        return DataLoader(self.dataset, batch_size=None, num_workers=int(self.dataset.data.prefetch))


class AuxPredictor(L.LightningModule):
    """Base model (truncated) + aux model: a batch of contexts -> predicted PCs and chi of tokens 1..T-1.

    The input normalisation, the output scale r and the map to components are folded into the
    aux model's layers once, so that a batch costs two matmuls after the base model:

        pcs = relu(x W_e'^T + b_e') W_d'^T + b_d',   W_e' = W_e / s_x,  b_e' = b_e - W_e (m_x / s_x),
                                                     W_d' = diag(r) W_d,  b_d' = r * b_d
        chi = pcs (V_K^T * s) + mu                   (pca.to_components)
    """

    def __init__(self, features: ResidualFeatures, bundle: AuxBundle) -> None:
        super().__init__()
        self.features = features
        encoder, decoder = bundle.model.encoder, bundle.model.decoder
        w_e, b_e = encoder.weight.double(), encoder.bias.double()
        w_d, b_d = decoder.weight.double(), decoder.bias.double()
        r = bundle.target_scale
        self.encoder = nn.Linear(encoder.in_features, encoder.out_features)
        self.decoder = nn.Linear(decoder.in_features, decoder.out_features)
        with torch.no_grad():
            self.encoder.weight.copy_(w_e / bundle.feature_std)
            self.encoder.bias.copy_(b_e - w_e @ (bundle.feature_mean / bundle.feature_std))
            self.decoder.weight.copy_(r[:, None] * w_d)
            self.decoder.bias.copy_(r * b_d)
        self.register_buffer("pc_to_chi", (bundle.pca.components * bundle.pca.scale).float())
        self.register_buffer("chi_mean", bundle.pca.mean.float())

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        if "n_shards" in batch:  # the end-of-stream marker
            return {}
        x = self.features(batch["input_ids"])[:, 1:].flatten(0, 1)
        pcs = self.decoder(torch.relu(self.encoder(x))).float()
        if not torch.isfinite(pcs).all():  # non-finite activations reach the predictions
            raise ValueError(f"predictions are not finite in shard {batch['shard']}, contexts from {batch['context']}: "
                             "the base model's activations are not finite; check the model's weights and dtype")
        return {"pcs": pcs.T.cpu(), "chi": torch.addmm(self.chi_mean, pcs, self.pc_to_chi).T.cpu()}


class ShardWriter(BasePredictionWriter):
    """Collects one shard's predictions and writes its three files when its last batch is done."""

    def __init__(self, output_dir: Path, tokenizer) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.tokenizer = output_dir, tokenizer
        self.parts: list[tuple[dict, dict]] = []
        self.n_shards: int | None = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        if "n_shards" in batch:
            self.n_shards = batch["n_shards"]
            return
        self.parts.append((prediction, batch))
        if batch["last"]:
            self._write(batch["shard"])
            self.parts = []

    def _write(self, index: int) -> None:
        batches = [b for _, b in self.parts]
        input_ids = torch.cat([b["input_ids"].cpu() for b in batches])
        n, per_context = input_ids.shape[0], input_ids.shape[1] - 1
        contexts = ContextSet(input_ids=input_ids, doc_index=torch.arange(n),
                              start=torch.tensor([s for b in batches for s in b["start"]]),
                              documents=[d for b in batches for d in b["documents"]])
        table = token_table(contexts, self.tokenizer)
        doc_id = np.repeat(np.array([d for b in batches for d in b["doc_id"]], dtype=np.int64), per_context)
        context = np.repeat(batches[0]["context"] + np.arange(n, dtype=np.int64), per_context)
        table = table.set_column(table.schema.get_field_index("doc_id"), "doc_id", pa.array(doc_id))
        table = table.set_column(table.schema.get_field_index("context"), "context", pa.array(context))
        for kind in ("chi", "pcs"):
            write_shard(self.output_dir, kind, index, torch.cat([p[kind] for p, _ in self.parts], dim=1))
        write_parquet(self.output_dir / shard_name("tokens", index, ".parquet"), table)  # last: the shard's marker


def finished_shards(output_dir: Path) -> frozenset[int]:
    """Shards whose token table (written last) exists."""
    files = (output_dir / "tokens").glob("shard-*.parquet")
    return frozenset(int(p.name[len("shard-"):-len(".parquet")]) for p in files)


def upsample(trainer: L.Trainer, aux_dir: str | Path, output_dir: str | Path = "runs/aux-predict",
             data: StreamConfig | None = None, base_model: str | None = None, revision: str | None = None,
             trust_remote_code: bool = False, config_text: str | None = None) -> Path:
    """Predict susceptibilities for every context of ``data`` and write them to ``output_dir``.

    ``base_model`` (default: the one aux.json names) may be a local copy; its config hash and
    weights must match the aux model's base model. A directory holding this prediction resumes or,
    when finished, is left as it is; one holding another prediction is refused.

    Args:
        trainer: the Lightning Trainer that runs the predictions (its ranks split the shards).
        aux_dir: output_dir of ``aux fit``.
        output_dir: where the predicted shards go (resumable).
        data: text source, context length, batching and sharding.
        base_model: load the base model from here (e.g. a local copy); default: the one in aux.json.
        revision: hub revision of ``base_model``.
        trust_remote_code: allow model code from the hub for the base model.
        config_text: the resolved config, saved as config.yaml (filled in by the CLI).
    """
    data = data or StreamConfig()
    aux_dir, out = Path(aux_dir), Path(output_dir)
    for name in (META_FILE, WEIGHTS_FILE, NORMALIZATION_FILE, PCA_FILE):  # the aux model, checked before it is used
        verify(aux_dir / name, stage_remedy(aux_dir))
    bundle = AuxBundle.load(aux_dir)
    recorded = bundle.meta["base_model"]
    name, rev = (base_model, revision) if base_model is not None else (recorded["pretrained"], recorded["revision"])
    model, tokenizer = load_causal_lm(name, revision=rev, trust_remote_code=trust_remote_code)
    check_same_model(recorded, model_identity(name, rev, model), f"aux predict with the aux model of {aux_dir}")
    context_length = data.context_length or bundle.meta["context_length"]
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len is not None and context_length > max_len:
        raise ValueError(f"data.context_length={context_length} is longer than the model accepts "
                         f"(max_position_embeddings={max_len}); lower data.context_length")
    identity = {"aux": file_digest(aux_dir / META_FILE), "aux_dir": str(aux_dir),
                "data": {**asdict(data), "context_length": context_length}}
    # Every rank checks (each must return when it is finished), rank 0 alone records.
    if claim(out, identity, record=PREDICT_FILE, other="another aux prediction",
             known=("config.yaml", "lightning_logs"), write=trainer.is_global_zero) == "finished":
        print(f"lit-susc: {out} already holds this prediction's finished results; nothing to do.")
        return out
    if config_text is not None and trainer.is_global_zero:
        (out / "config.yaml").write_text(config_text)
    writer = ShardWriter(out, tokenizer)
    trainer.callbacks.append(writer)
    stream = _StreamData(tokenizer, data, context_length, finished_shards(out))
    predictor = AuxPredictor(ResidualFeatures(model, bundle.meta["layers"]), bundle)
    with warnings.catch_warnings():  # the writer needs no sampler indices, which an iterable stream lacks
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        trainer.predict(predictor, datamodule=stream, return_predictions=False)
    trainer.callbacks.remove(writer)
    trainer.strategy.barrier("lit-susc aux shards written")
    if trainer.is_global_zero:
        _write_index(out, aux_dir, bundle, identity, writer.n_shards)
    trainer.strategy.barrier("lit-susc aux index written")
    return out


def _write_index(out: Path, aux_dir: Path, bundle: AuxBundle, identity: dict, n_shards: int) -> None:
    if n_shards == 0:
        raise ValueError(f"data source {identity['data']['source']!r} holds no context of "
                         f"{identity['data']['context_length']} tokens; use more data or a shorter context_length")
    missing = sorted(set(range(n_shards)) - finished_shards(out))
    if missing:
        raise RuntimeError(f"shards {missing[:5]} of {out} were not written; run the same command again to resume")
    shards, pcs, tokens, start = [], [], [], 0
    for s in range(n_shards):
        table = out / shard_name("tokens", s, ".parquet")
        with reading(table, stage_remedy(out, delete=[table], outcome="only that shard is predicted again")) as checked:
            stop = start + pq.ParquetFile(checked).metadata.num_rows
        shards.append({"file": shard_name("chi", s), "start": start, "stop": stop})
        pcs.append({"file": shard_name("pcs", s), "start": start, "stop": stop})
        tokens.append({"file": shard_name("tokens", s, ".parquet"), "start": start, "stop": stop})
        start = stop
    remove_temporaries(out)
    copy_file(aux_dir / PCA_FILE, out / PCA_FILE, stage_remedy(aux_dir))
    meta = bundle.meta
    write_json(out / "result.json", {
        "source": "aux", "components": meta["components"], "convention": meta["convention"], "nbeta": meta["nbeta"],
        "description": f"chi predicted by the aux model in {aux_dir} ({meta['convention']} convention), float32",
        "dtype": "float32", "observation_shape": [start], "n_tokens": start, "shards": shards,
        "pcs": {"n_pcs": meta["n_pcs"], "shards": pcs}, "tokens": tokens, "config": identity,
        # the ground truth's noise per component, for the reliability of directions (cluster.whiten)
        **({"mean_se_sq": meta["mean_se_sq"]} if "mean_se_sq" in meta else {}),
    })
    mark_finished(out, {"tokens": start, "shards": n_shards, "components": len(meta["components"]),
                        "n_pcs": meta["n_pcs"], "source": "aux"})


def read_pcs(directory: str | Path, start: int = 0, stop: int | None = None, whiten: bool = False) -> Tensor:
    """Predicted PC scores [n_pcs, stop - start] of a finished prediction (whitened: / sqrt(variances))."""
    meta = read_metadata(directory)
    pcs = read_shards(directory, meta["pcs"]["shards"], "pcs", start, stop, rows=meta["pcs"]["n_pcs"],
                      remedy=shard_remedy(directory, meta),
                      dtype=torch.float32)
    if not whiten:
        return pcs
    with reading(Path(directory) / PCA_FILE, stage_remedy(directory)) as path:
        basis = PCABasis.load(path)
    return basis.whiten(pcs.T).T


def read_tokens(directory: str | Path) -> pa.Table:
    """The token table of a finished prediction, all shards in order."""
    meta = read_metadata(directory)
    return read_token_table(directory, meta["tokens"], shard_remedy(directory, meta))
