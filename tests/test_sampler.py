"""The sampler LightningModule: restriction to a component, chain schedule, seeding."""

import lightning as L
import torch
from torch import nn

from lit_susc import SGLDConfig, estimate_susceptibilities
from lit_susc.schedule import ChainPlan


class Watch(L.Callback):
    """Records, at every SGLD step, whether the frozen layer moved or got a gradient."""

    def __init__(self, frozen, moving):
        self.frozen, self.moving = frozen, moving
        self.frozen_start, self.moving_start = frozen.detach().clone(), moving.detach().clone()
        self.frozen_grads, self.frozen_moved, self.moving_moved = 0, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.frozen_grads += self.frozen.grad is not None
        self.frozen_moved += not torch.equal(self.frozen.detach(), self.frozen_start)
        self.moving_moved += not torch.equal(self.moving.detach(), self.moving_start)


def test_parameters_outside_the_component_get_no_gradient_and_never_move():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32)
    watch = Watch(model[2].weight, model[0].weight)
    estimate_susceptibilities(model, lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, [(x, y)], [(x, y)],
                              components={"first": {"0.weight": None, "0.bias": None}},
                              sgld=SGLDConfig(lr=1e-3, nbeta=10.0, chains=2, draws=3),
                              trainer={"accelerator": "cpu", "enable_progress_bar": False, "callbacks": [watch]})
    assert watch.frozen_grads == 0 and watch.frozen_moved == 0
    assert watch.moving_moved == 2 * 3  # every step of both chains moved the component


def test_draws_are_taken_after_burn_in_every_steps_between_draws():
    plan = ChainPlan(burn_in=2, steps_between_draws=4, draws=3)
    assert plan.steps == 14
    assert [s for s in range(plan.steps) if plan.is_draw(s)] == [5, 9, 13]


def test_reducing_the_accumulators_in_blocks_of_one_component_changes_nothing():
    from lit_susc import ComputeConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32)
    components = {"first": {"0.weight": None}, "bias": {"0.bias": None}, "last": {"2.weight": None}}

    def chi(budget_gb):
        return estimate_susceptibilities(
            model, lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, [(x, y)], [(x, y)], components=components,
            sgld=SGLDConfig(lr=1e-3, nbeta=10.0, chains=2, draws=3), compute=ComputeConfig(memory_budget_gb=budget_gb),
            trainer={"accelerator": "cpu", "enable_progress_bar": False}).chi

    one_block, per_component = chi(1.0), chi(1e-9)  # 1e-9 GB holds less than one component's sums
    assert torch.equal(one_block, per_component) and one_block.abs().sum() > 0


def test_a_diverging_run_hands_the_model_back_at_w_star():
    import pytest

    from callbacks import ChainDivergedError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    w_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(32, 4), torch.randn(32)
    with pytest.raises(ChainDivergedError):
        estimate_susceptibilities(model, lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, [(x, y)], [(x, y)],
                                  sgld=SGLDConfig(lr=50.0, nbeta=100.0, localization=0.0, chains=1, draws=20),
                                  trainer={"accelerator": "cpu", "enable_progress_bar": False})
    assert all(torch.equal(p, w_star[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
