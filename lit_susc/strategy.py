"""DDP without gradient averaging: independent chains on every rank.

Plain DDP averages gradients across ranks, which would couple the SGLD chains that different
ranks run. This strategy keeps DDP's process group (so accumulators can be reduced at the end)
but never wraps the module in ``DistributedDataParallel``.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class IndependentChainsStrategy(DDPStrategy):
    """``ddp`` for samplers: one process per device, no gradient synchronisation."""

    strategy_name = "ddp_chains"

    def configure_ddp(self) -> None:
        # Leave self.model as the LightningModule: no reducer, no gradient all-reduce.
        pass


if IndependentChainsStrategy.strategy_name not in StrategyRegistry:
    StrategyRegistry.register(
        IndependentChainsStrategy.strategy_name, IndependentChainsStrategy,
        description="DDP process group without gradient averaging (independent SGLD chains per rank)",
    )


def _several_devices(devices, accelerator) -> bool:
    """Whether Lightning would start more than one process for ``devices`` (an int, a list of
    indices, "auto" or -1: every visible GPU)."""
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if devices in ("auto", -1, "-1"):
        import torch

        return accelerator in ("auto", "gpu", "cuda") and torch.cuda.device_count() > 1
    return int(devices) > 1


def chains_strategy(strategy, devices=1, accelerator="auto"):
    """Map a user's ``ddp`` request, and ``auto`` on several devices (where Lightning would choose
    plain DDP), to the independent-chains strategy; leave others alone."""
    if isinstance(strategy, str) and strategy in ("ddp", "ddp_find_unused_parameters_true", "ddp_chains"):
        return IndependentChainsStrategy()
    if strategy == "auto" and _several_devices(devices, accelerator):
        return IndependentChainsStrategy()
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy, IndependentChainsStrategy):
        raise ValueError("pass strategy='ddp' (or 'ddp_chains'): a plain DDPStrategy would average gradients "
                         "across ranks and couple independent SGLD chains")
    if isinstance(strategy, str) and strategy.startswith("ddp_spawn"):
        raise ValueError("ddp_spawn is not supported for sampling (it shares plain tensor attributes between "
                         "processes on CPU, double-counting sums); use strategy='ddp'")
    return strategy
