import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    # Tiny matmuls: threading only adds overhead (and oversubscribes a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A briefly trained 2-layer GPT-NeoX with its BPE tokenizer, saved like a hub checkpoint."""
    from lit_susc.tinylm import TinyLMConfig, train_tiny_lm

    config = TinyLMConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                          context_length=32, train_steps=30, batch_size=8, lr=1e-2, warmup_steps=5,
                          eval_contexts=16)
    return train_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), config, progress=False, max_documents=30)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A briefly trained 2-layer Llama with grouped-query attention (4 query heads in 2 key/value
    groups) and its BPE tokenizer, saved like a hub checkpoint."""
    from lit_susc.tinylm import TinyLMConfig, train_tiny_lm

    config = TinyLMConfig(architecture="llama", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                          num_key_value_heads=2, intermediate_size=64, context_length=32, train_steps=30,
                          batch_size=8, lr=1e-2, warmup_steps=5, eval_contexts=16)
    return train_tiny_lm(tmp_path_factory.mktemp("tiny_llama"), config, progress=False, max_documents=30)
