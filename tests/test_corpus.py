import json

import pytest
import torch
from transformers import AutoTokenizer

from lit_susc.corpus import Document, iter_texts, load_texts, make_contexts, token_table, train_bpe_tokenizer

CONTEXT = 32


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return load_texts("stdlib", max_documents=30)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer")


@pytest.fixture(scope="module")
def tokenizer(documents, tokenizer_dir):
    return train_bpe_tokenizer(documents, 300, tokenizer_dir)


def test_stdlib_yields_sorted_library_sources():
    names = [doc.name for doc in iter_texts("stdlib")]
    assert len(names) > 100
    assert names == sorted(names)
    assert all(name.endswith(".py") for name in names)
    excluded = {"test", "tests", "idle_test", "site-packages"}
    assert not any(excluded & set(name.split("/")[:-1]) for name in names)


def test_max_documents_limits_documents(documents):
    assert len(documents) == 30
    assert all(doc.text for doc in documents)


def test_local_txt_jsonl_and_directory_sources(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"body": "one"}) + "\n" + json.dumps({"body": "two"}) + "\n")
    assert [(d.name, d.text) for d in load_texts(str(tmp_path))] == [("a.txt", "ay"), ("b.txt", "bee")]
    assert [d.text for d in load_texts(str(tmp_path / "b.txt"))] == ["bee"]
    assert [d.text for d in load_texts(str(tmp_path / "docs.jsonl"), text_column="body")] == ["one", "two"]


def test_empty_source_raises(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no documents"):
        load_texts(str(tmp_path))


def test_tokenizer_round_trip_and_reload(tokenizer, tokenizer_dir):
    snippet = "def f(x):\n    return {'a': x ** 2}  # ünïcode ✓\n\n\tpass\n"
    ids = tokenizer.encode(snippet, add_special_tokens=False)
    assert tokenizer.decode(ids) == snippet
    reloaded = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert reloaded.encode(snippet, add_special_tokens=False) == ids
    assert reloaded.eos_token == "<|endoftext|>"
    assert len(reloaded) == 300


def test_contexts_are_slices_of_document_token_streams(tokenizer, documents):
    contexts = make_contexts(tokenizer, documents, CONTEXT)
    n = len(contexts)
    assert contexts.input_ids.shape == (n, CONTEXT) and contexts.input_ids.dtype == torch.long
    assert contexts.doc_index.shape == contexts.start.shape == (n,)
    assert torch.all(contexts.doc_index[1:] >= contexts.doc_index[:-1])
    assert contexts.documents == [doc.name for doc in documents]
    assert torch.all(contexts.start % CONTEXT == 0)
    for d in contexts.doc_index.unique()[:8].tolist():
        ids = tokenizer.encode(documents[d].text, add_special_tokens=False)
        for c in torch.nonzero(contexts.doc_index == d).flatten().tolist():
            s = int(contexts.start[c])
            assert contexts.input_ids[c].tolist() == ids[s : s + CONTEXT]


def test_skip_and_max_contexts_carve_disjoint_slices(tokenizer, documents):
    everything = make_contexts(tokenizer, documents, CONTEXT)
    head = make_contexts(tokenizer, documents, CONTEXT, max_contexts=5)
    tail = make_contexts(tokenizer, documents, CONTEXT, max_contexts=7, skip_contexts=5)
    assert torch.equal(head.input_ids, everything.input_ids[:5])
    assert torch.equal(tail.input_ids, everything.input_ids[5:12])
    assert torch.equal(tail.doc_index, everything.doc_index[5:12])
    assert torch.equal(tail.start, everything.start[5:12])


def test_token_table_lines_up_with_shifted_inputs(tokenizer, documents):
    contexts = make_contexts(tokenizer, documents, CONTEXT, max_contexts=6, skip_contexts=3)
    table = token_table(contexts, tokenizer)
    assert table.num_rows == 6 * (CONTEXT - 1)
    col = {name: torch.tensor(table.column(name).to_pylist()) for name in ("doc_id", "position", "token_id", "context", "offset")}
    assert torch.equal(col["token_id"], contexts.input_ids[:, 1:].flatten())
    assert torch.equal(col["doc_id"], contexts.doc_index.repeat_interleave(CONTEXT - 1))
    assert torch.equal(col["position"], contexts.start[col["context"]] + col["offset"])
    assert col["offset"].min() == 1 and col["offset"].max() == CONTEXT - 1
    assert table.column("document").to_pylist()[0] == contexts.documents[contexts.doc_index[0]]
    assert table.column("token").to_pylist()[:5] == [tokenizer.decode([i]) for i in col["token_id"][:5].tolist()]


def test_context_longer_than_documents_raises(tokenizer):
    short = [Document("a", "x = 1\n"), Document("b", "y = 2\n")]
    with pytest.raises(ValueError, match="smaller context_length"):
        make_contexts(tokenizer, short, 64)
