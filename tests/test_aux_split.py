"""The training/validation split is by document, never by token."""

import numpy as np
import pytest

from lit_susc.aux.split import SplitConfig, document_split


def documents(n_docs=50, seed=0):
    rng = np.random.default_rng(seed)
    return [f"doc{d}" for d in rng.integers(0, n_docs, size=3000)]  # tokens of a document interleaved


def test_no_document_has_tokens_on_both_sides():
    docs = np.array(documents())
    is_val = document_split(list(docs), SplitConfig(val_fraction=0.2))
    assert not set(docs[is_val]) & set(docs[~is_val])
    assert set(docs[is_val]) | set(docs[~is_val]) == set(docs)


def test_the_validation_fraction_counts_documents():
    docs = np.array(documents())
    is_val = document_split(list(docs), SplitConfig(val_fraction=0.2))
    assert len(set(docs[is_val])) == 10


def test_the_split_depends_on_the_seed_and_not_on_token_order():
    docs = documents()
    a = document_split(docs, SplitConfig(seed=1))
    assert set(np.array(docs)[a]) == set(np.array(docs[::-1])[document_split(docs[::-1], SplitConfig(seed=1))])
    assert not np.array_equal(a, document_split(docs, SplitConfig(seed=2)))


def test_every_side_gets_a_document_even_for_extreme_fractions():
    docs = ["a", "a", "b", "c"]
    assert document_split(docs, SplitConfig(val_fraction=0.01)).sum() >= 1
    assert (~document_split(docs, SplitConfig(val_fraction=0.99))).sum() >= 1


def test_a_single_document_cannot_be_split():
    with pytest.raises(ValueError, match="at least 2"):
        document_split(["a"] * 10, SplitConfig())


def test_a_fraction_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="val_fraction"):
        SplitConfig(val_fraction=1.0)
