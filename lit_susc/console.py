"""What the command line prints: Lightning's messages and transformers' progress bars that say nothing
about the user's run, silenced.

Applied by ``run.py`` (every command and every stage process goes through it), not on import: a
program that uses the Python API keeps Lightning's messages as Lightning prints them.
"""

from __future__ import annotations

import logging
import warnings

NOT_THE_USERS_BUSINESS = (
    # The sampler keeps the model in eval mode on purpose (no dropout while sampling).
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # Lightning's own use of a torch pytree class that torch 2.13 deprecates.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
"""Warnings (regular expressions of their start) that the command line does not show."""
TIPS = ("💡 Tip:",)
"""Starts of Lightning's advertising lines at INFO level."""


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIPS)


def quiet_lightning() -> None:
    """Hide the warnings of ``NOT_THE_USERS_BUSINESS``, Lightning's tips and transformers' own progress
    bars ("Loading weights" of every model load, "Writing model shards" of the tiny LM's save) in this
    process; the hub's download bars stay, as a download can take minutes."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    for message in NOT_THE_USERS_BUSINESS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())
    downloads_shown = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # which turns the hub's bars off too
    if downloads_shown:
        enable_progress_bars()
