"""The prediction stream: contexts cut like sampling's, shards assigned to ranks without overlap."""

import pytest
import torch

from lit_susc.aux.predict import ContextBatches, StreamConfig, iter_context_shards
from lit_susc.corpus import iter_texts, make_contexts
from lit_susc.tinylm import load_causal_lm

CONTEXT = 16


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir):
    return load_causal_lm(str(tiny_lm_dir))[1]


def test_stream_shards_are_make_contexts_cut_into_consecutive_pieces(tokenizer):
    """Oracle: corpus.make_contexts, which cut the ground-truth run's contexts."""
    docs = lambda: iter_texts("stdlib", max_documents=5)
    shards = list(iter_context_shards(tokenizer, docs(), CONTEXT, shard_contexts=7, max_contexts=40))
    ref = make_contexts(tokenizer, docs(), CONTEXT, max_contexts=40)
    assert [len(s.input_ids) for s in shards] == [7] * 5 + [5]
    assert [s.first_context for s in shards] == [0, 7, 14, 21, 28, 35]
    assert torch.equal(torch.cat([s.input_ids for s in shards]), ref.input_ids)
    assert torch.equal(torch.cat([s.doc_id for s in shards]), ref.doc_index)
    assert torch.equal(torch.cat([s.start for s in shards]), ref.start)
    assert [n for s in shards for n in s.documents] == [ref.documents[i] for i in ref.doc_index]


def test_contexts_per_document_cuts_the_stream_like_make_contexts(tokenizer):
    """Oracle: corpus.make_contexts with the same limit; every document gives at most 2 contexts."""
    docs = lambda: iter_texts("stdlib", max_documents=8)
    shards = list(iter_context_shards(tokenizer, docs(), CONTEXT, shard_contexts=5, max_contexts=12, per_document=2))
    ref = make_contexts(tokenizer, docs(), CONTEXT, max_contexts=12, contexts_per_document=2)
    assert torch.equal(torch.cat([s.input_ids for s in shards]), ref.input_ids)
    assert torch.equal(torch.cat([s.doc_id for s in shards]), ref.doc_index)
    assert int(torch.bincount(ref.doc_index).max()) == 2 and len(ref.input_ids) == 12


def test_ranks_take_disjoint_shards_that_together_cover_the_stream(tokenizer):
    data = StreamConfig(source="stdlib", max_documents=5, max_contexts=40, batch_size=3, shard_contexts=7)

    def contexts(rank, world, finished=frozenset()):
        *batches, end = ContextBatches(tokenizer, data, CONTEXT, rank=rank, world=world, finished=finished)
        assert end == {"n_shards": 6}
        return {(b["shard"], b["context"] + i) for b in batches for i in range(len(b["input_ids"]))}

    everything = contexts(0, 1)
    assert {c for _, c in everything} == set(range(40))
    ranks = [contexts(r, 2) for r in range(2)]
    assert not ranks[0] & ranks[1] and ranks[0] | ranks[1] == everything
    assert {s for s, _ in ranks[1]} == {1, 3, 5}
    assert {s for s, _ in contexts(0, 1, finished=frozenset({0, 2}))} == {1, 3, 4, 5}  # resume skips finished
