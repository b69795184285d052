"""Text sources, a byte-level BPE tokenizer, and fixed-length contexts with a per-token table.

Sampling data and observation data are carved from the same corpus by ``make_contexts``:
contexts are cut in a fixed, document-ordered sequence, so ``skip_contexts`` gives disjoint
slices. ``token_table`` names every predicted token of a ``ContextSet`` in the row-major order
of per-token losses ``logits[:, :-1]`` vs ``input_ids[:, 1:]``.
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"

# Directories of the standard library that are not ordinary library code: test suites (which
# include deliberately broken or non-utf8 files) and third-party installs.
_STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})

# Documents are tokenized in groups of this many, so that ``max_contexts`` can stop reading a
# huge (streamed) corpus early while each group still batch-encodes in parallel.
_ENCODE_BATCH_DOCUMENTS = 256


@dataclass
class Document:
    """One text of a corpus."""

    name: str
    """Stable identifier: a relative path for files, ``source/split/index`` for datasets."""
    text: str
    """The full text."""


def iter_texts(
    source: str,
    *,
    split: str = "train",
    text_column: str = "text",
    max_documents: int | None = None,
    streaming: bool = False,
) -> Iterator[Document]:
    """Yield the non-empty documents of ``source`` lazily, in a deterministic order.

    ``source`` is ``"stdlib"`` (the .py files of this interpreter's standard library, without
    test suites and site-packages), a local ``.txt`` file (one document), a local ``.jsonl`` file
    (one document per line, text in ``text_column``), a local directory (every ``*.txt`` below it,
    sorted by relative path), or else a HuggingFace dataset name loaded with ``split`` and
    ``streaming``. At most ``max_documents`` documents are yielded.

    A source that exists, or that starts with ``/``, ``.`` or ``~``, is a local path
    (``looks_like_path``); anything else is a dataset name.

    Raises:
        ValueError: if ``max_documents`` < 1, a local source is missing or of unknown type, a file is
            not UTF-8 or a .jsonl line not a JSON object with a string ``text_column`` (the message
            names the file and line), the hub cannot be reached for a dataset name, or the source
            held no documents.
    """
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be >= 1 or None, got {max_documents}")
    count = 0
    for doc in _iter_source(source, split=split, text_column=text_column, streaming=streaming):
        if not doc.text:
            continue
        yield doc
        count += 1
        if count == max_documents:
            return
    if count == 0:
        raise ValueError(f"source {source!r} held no documents (all missing or empty); check the path, split or text_column")


def load_texts(
    source: str,
    *,
    split: str = "train",
    text_column: str = "text",
    max_documents: int | None = None,
    streaming: bool = False,
) -> list[Document]:
    """Load the documents of ``source`` into a list; see ``iter_texts`` for the sources."""
    return list(iter_texts(source, split=split, text_column=text_column, max_documents=max_documents, streaming=streaming))


def _iter_source(source: str, *, split: str, text_column: str, streaming: bool) -> Iterator[Document]:
    if source == "stdlib":
        yield from _iter_stdlib()
        return
    path = Path(source).expanduser()
    if path.is_dir():
        for file in sorted(path.rglob("*.txt"), key=lambda p: p.relative_to(path).as_posix()):
            yield Document(file.relative_to(path).as_posix(), _decode(file.read_bytes(), file))
    elif path.is_file():
        if path.suffix == ".txt":
            yield Document(path.name, _decode(path.read_bytes(), path))
        elif path.suffix == ".jsonl":
            yield from _iter_jsonl(path, text_column)
        else:
            raise ValueError(f"local file {source!r} must be .txt (one document) or .jsonl (one per line)")
    elif path.suffix in {".txt", ".jsonl"}:
        raise ValueError(f"file {source!r} does not exist; pass an existing .txt/.jsonl path")
    elif looks_like_path(source):
        raise ValueError(f"data source {source} does not exist; pass an existing .txt/.jsonl file or directory "
                         "of .txt files (or a dataset name such as NeelNanda/pile-10k)")
    else:
        yield from _iter_hf_dataset(source, split=split, text_column=text_column, streaming=streaming)


def looks_like_path(name: str) -> bool:
    """Whether ``name`` (a model or a data source) means a local path rather than a hub name: it
    exists, or starts with ``/``, ``.`` or ``~``. A hub name (``name`` or ``namespace/name``) starts
    with none of them, so a mistyped path is reported as missing instead of being looked up on the hub."""
    return name.startswith(("/", ".", "~")) or os.path.isabs(name) or Path(name).expanduser().exists()


def hub_unreachable() -> str | None:
    """Why the HuggingFace hub cannot be reached from here, or None when it answers.

    Asks once, without retries: transformers and datasets retry a failed connection for about 30 s
    before they give up (or read their cache). ``HF_HUB_OFFLINE`` counts as unreachable.
    """
    from huggingface_hub import constants, get_session
    from huggingface_hub.utils import OfflineModeIsEnabled, httpx  # httpx: the hub's HTTP client, any version

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)  # any answer will do
    except (httpx.TransportError, OfflineModeIsEnabled) as err:
        return f"{constants.ENDPOINT}: {type(err).__name__}: {err}"
    return None


def _decode(data: bytes, path: Path, line: int = 1) -> str:
    """``data`` (the bytes of ``path`` from its ``line``) as UTF-8; a ValueError naming the file and line where it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line += data.count(b"\n", 0, err.start)
        raise ValueError(f"{path}:{line} is not UTF-8 ({err.reason}: byte 0x{data[err.start]:02x}); lit-susc reads "
                         "text as UTF-8: convert the file (e.g. iconv -f LATIN1 -t UTF-8)") from err


def _iter_stdlib() -> Iterator[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[str] = []
    # os.walk with pruning: site-packages can hold tens of thousands of files.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_EXCLUDED_DIRS]
        rel = Path(dirpath).relative_to(root)
        files.extend((rel / f).as_posix() for f in filenames if f.endswith(".py"))
    for rel_name in sorted(files):
        try:
            text = (root / rel_name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield Document(rel_name, text)


def _iter_jsonl(path: Path, text_column: str) -> Iterator[Document]:
    # Bytes, split at newlines only: the line numbers in messages are what an editor shows.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                # json's msg ends in " at" before the position it leaves out
                raise ValueError(f"{path}:{lineno}:{err.colno} is not valid JSON: {err.msg.removesuffix(' at')}; "
                                 "a .jsonl file holds one JSON object per line") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno} holds a JSON {type(record).__name__}, not an object with a "
                                 f"{text_column!r} field")
            if text_column not in record:
                raise ValueError(f"{path}:{lineno} has no field {text_column!r}; pass text_column= one of {sorted(record)}")
            text = record[text_column]
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: field {text_column!r} is not a string but {type(text).__name__} "
                                 f"{text!r:.40}")
            yield Document(f"{path.name}:{lineno}", text)


def _iter_hf_dataset(source: str, *, split: str, text_column: str, streaming: bool) -> Iterator[Document]:
    import datasets  # Only needed for hub/cached datasets; slow to import.

    # Offline (HF_HUB_OFFLINE), datasets reads its cache at once; online it would retry for 30 s first.
    offline = datasets.config.HF_HUB_OFFLINE
    unreachable = None if offline else hub_unreachable()
    if unreachable:
        raise _no_hub_for(source, split, unreachable, offline=False)
    try:
        dataset = datasets.load_dataset(source, split=split, streaming=streaming)
    except ConnectionError as err:  # offline and not in the cache, or the hub went away since it answered
        raise _no_hub_for(source, split, str(err), offline) from err
    if dataset.column_names is not None and text_column not in dataset.column_names:
        raise ValueError(f"dataset {source!r} has no column {text_column!r}; pass text_column= one of {dataset.column_names}")
    for i, record in enumerate(dataset):
        yield Document(f"{source}/{split}/{i}", record[text_column])


def _no_hub_for(source: str, split: str, reason: str, offline: bool) -> ValueError:
    """What to do about a hub dataset that cannot be read (``offline``: HF_HUB_OFFLINE is set already)."""
    cached = "" if offline else ", or with the dataset in your datasets cache set HF_HUB_OFFLINE=1"
    return ValueError(f"data.source {source!r} is a hub dataset and the hub is out of reach ({reason}); where it "
                      f"is reachable, write the dataset to a .jsonl file (datasets.load_dataset({source!r}, "
                      f"split={split!r}).to_json('data.jsonl')), copy it here and set data.source: "
                      f"/path/to/data.jsonl{cached}")


def train_bpe_tokenizer(documents: Iterable[Document], vocab_size: int, out_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on ``documents`` and save it to ``out_dir``.

    ``<|endoftext|>`` is the single special token (bos, eos and unk); byte-level BPE never needs
    unk. The result reloads with ``AutoTokenizer.from_pretrained(out_dir)`` and decodes exactly
    what it encodes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"vocab_size must be >= {len(alphabet) + 1} (256 bytes + {EOS_TOKEN}), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator((doc.text for doc in documents), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        # Space "clean-up" would break decode(encode(text)) == text on code.
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out_dir)
    return fast


@dataclass
class ContextSet:
    """Fixed-length token contexts cut from a list of documents."""

    input_ids: torch.Tensor
    """Token ids, int64 ``[N, T]``."""
    doc_index: torch.Tensor
    """Index into ``documents`` of each context's document, int64 ``[N]``."""
    start: torch.Tensor
    """Position of each context's first token within its document's token stream, int64 ``[N]``."""
    documents: list[str]
    """Names of the documents read, in input order (a prefix when ``max_contexts`` stopped early)."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def make_contexts(
    tokenizer: PreTrainedTokenizerBase,
    documents: Iterable[Document],
    context_length: int,
    max_contexts: int | None = None,
    *,
    skip_contexts: int = 0,
    contexts_per_document: int | None = None,
) -> ContextSet:
    """Cut ``documents`` into non-overlapping contexts of exactly ``context_length`` tokens.

    Each document is tokenized without special tokens and split from its start; the remainder
    shorter than a context is dropped (so are documents shorter than one context), and so is
    everything after a document's first ``contexts_per_document`` contexts (None: none). Contexts are
    numbered in document order; the first ``skip_contexts`` are skipped and up to
    ``max_contexts`` of the rest are returned, so two calls with ``skip_contexts`` apart give
    disjoint data. Reading stops as soon as enough contexts are collected.
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (a context predicts tokens 1..T-1), got {context_length}")
    if max_contexts is not None and max_contexts < 1:
        raise ValueError(f"max_contexts must be >= 1 or None, got {max_contexts}")
    if skip_contexts < 0:
        raise ValueError(f"skip_contexts must be >= 0, got {skip_contexts}")
    if contexts_per_document is not None and contexts_per_document < 1:
        raise ValueError(f"contexts_per_document must be >= 1 or None, got {contexts_per_document}")

    names: list[str] = []
    chunks: list[np.ndarray] = []
    doc_chunks: list[np.ndarray] = []
    start_chunks: list[np.ndarray] = []
    to_skip, taken = skip_contexts, 0
    for batch in _batched(documents, _ENCODE_BATCH_DOCUMENTS):
        encoded = encode_texts(tokenizer, [doc.text for doc in batch])
        for doc, ids in zip(batch, encoded):
            doc_id = len(names)
            names.append(doc.name)
            n = len(ids) // context_length
            if contexts_per_document is not None:
                n = min(n, contexts_per_document)
            first = min(n, to_skip)
            to_skip -= first
            if max_contexts is not None:
                n = min(n, first + max_contexts - taken)
            if n <= first:
                continue
            chunks.append(np.asarray(ids[first * context_length : n * context_length], dtype=np.int64).reshape(-1, context_length))
            doc_chunks.append(np.full(n - first, doc_id, dtype=np.int64))
            start_chunks.append(np.arange(first, n, dtype=np.int64) * context_length)
            taken += n - first
            if taken == max_contexts:
                break
        if taken == max_contexts:
            break

    if not chunks:
        raise ValueError(
            f"no contexts of {context_length} tokens after skipping {skip_contexts}: the {len(names)} documents "
            "are shorter than context_length (or too few); use a smaller context_length, fewer skip_contexts, or more documents"
        )
    return ContextSet(
        input_ids=torch.from_numpy(np.concatenate(chunks)),
        doc_index=torch.from_numpy(np.concatenate(doc_chunks)),
        start=torch.from_numpy(np.concatenate(start_chunks)),
        documents=names,
    )


def _batched(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (how every context of this package is cut)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer directly: parallel, and no "longer than model_max_length" warning.
        return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def token_table(contexts: ContextSet, tokenizer: PreTrainedTokenizerBase) -> pa.Table:
    """One row per predicted token, aligned with row-major flattened per-token losses.

    Row ``c * (T - 1) + (t - 1)`` describes token ``t`` (1 <= t < T) of context ``c``, predicted
    from tokens ``0..t-1``; i.e. the rows line up with ``logits[:, :-1]`` vs ``input_ids[:, 1:]``.
    Columns: ``doc_id``, ``document`` (name), ``position`` (within the document's token stream),
    ``token_id``, ``token`` (the id decoded on its own), ``context`` (c) and ``offset`` (t).
    """
    n, length = contexts.input_ids.shape
    targets = contexts.input_ids[:, 1:].reshape(-1).numpy()
    context = np.repeat(np.arange(n, dtype=np.int64), length - 1)
    offset = np.tile(np.arange(1, length, dtype=np.int64), n)
    doc_id = np.repeat(contexts.doc_index.numpy(), length - 1)
    position = np.repeat(contexts.start.numpy(), length - 1) + offset
    # Decode each distinct id once; the string columns are gathers of those.
    unique_ids, inverse = np.unique(targets, return_inverse=True)
    token_text = pa.array([tokenizer.decode([int(i)], clean_up_tokenization_spaces=False) for i in unique_ids], pa.string())
    return pa.table(
        {
            "doc_id": pa.array(doc_id, pa.int64()),
            "document": pa.array(contexts.documents, pa.string()).take(pa.array(doc_id)),
            "position": pa.array(position, pa.int64()),
            "token_id": pa.array(targets.astype(np.int64), pa.int64()),
            "token": token_text.take(pa.array(inverse.reshape(-1))),
            "context": pa.array(context, pa.int64()),
            "offset": pa.array(offset, pa.int64()),
        }
    )
