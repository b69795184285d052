"""The chain engine (lit_susc.chains) is plain PyTorch: it runs restricted chains without a Trainer."""

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from lit_susc.chains import ChainEngine
from lit_susc.components import discover_components
from lit_susc.config import SGLDConfig
from lit_susc.lm import per_token_loss
from lit_susc.schedule import Unit


def _engine(model):
    optimizer = SGLDConfig(lr=1e-3, nbeta=20.0, localization=100.0).make_optimizer(list(model.parameters()))
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    return ChainEngine(model, per_token_loss, optimizer, lambda loss: loss.backward(), torch.device("cpu"),
                       reference=ids, observation=[ids]), ids


def test_a_chain_moves_only_its_component_and_returns_to_w_star():
    """Oracle: the restriction's definition. After steps of a chain of head 1 of block 0, exactly the
    masked entries of that head have moved (nothing else), and restricting again restores w*."""
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32,
                                             max_position_embeddings=12)).eval()
    w_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    component = discover_components(model)["layers.0.heads.1"]
    engine, ids = _engine(model)
    engine.begin(component, [Unit(0, 0, "layers.0.heads.1", 0)], seed=0, state_dir=lambda unit: None)
    for _ in range(3):
        losses = engine.step([ids], [None])
    assert losses.shape == (1,) and torch.isfinite(losses).all()
    for name, p in model.named_parameters():
        moved = p.detach() != w_star[name]
        allowed = torch.zeros_like(moved) if name not in component else (
            torch.ones_like(moved) if component[name] is None else component[name])
        assert not (moved & ~allowed).any(), f"{name} moved outside the component"
        if name in component:
            assert moved.any(), f"{name} did not move"
    engine.restrict(component, lone=True)
    assert all(torch.equal(p.detach(), w_star[n]) for n, p in model.named_parameters())
    assert engine.reference_losses().shape == (1,) and engine.observation_losses().shape == (1, 4 * 11)
