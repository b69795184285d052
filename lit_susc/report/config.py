"""What the cluster browser shows: ReportConfig, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import check_number


@dataclass
class ReportConfig:
    """What the cluster browser shows."""

    examples_per_cluster: int = 40
    """Tokens shown in context on each cluster page (chosen at random among its tokens, then
    shown in reading order)."""
    context_left: int = 12
    """Tokens of context shown before each example token (never across its context's edge)."""
    context_right: int = 4
    """Tokens of context shown after each example token."""
    top_tokens: int = 15
    """Most frequent tokens listed on each cluster page (and searched by the index's search box)."""
    trace_components: list[str] | None = None
    """Glob patterns of the components whose SGLD traces are plotted; each must match a traced
    component. None: head 0 and the MLP of the first and last layer, and embed/pos_embed/unembed
    (the first four components of a run without transformer names)."""
    profile: Literal["zscore", "raw"] = "zscore"
    """A cluster's profile: the mean over its tokens of each component's chi z-scored over all
    tokens ('zscore'), or of raw chi ('raw'). Raw chi scales differ by orders of magnitude between
    components, so raw profiles mostly show which components have large chi everywhere."""
    chi_block_tokens: int = 1 << 14
    """Tokens of chi read at a time (memory: about 4 x components x this x 8 bytes, the block and
    the temporaries of its sums; 215 MB for Pythia-1.4B's 410 components)."""
    example_seed: int = 0
    """Seeds the choice of example tokens, so a rebuilt report shows the same examples."""
    min_reliability: float = 0.3
    """Components whose reliability (the share of their chi's variance over tokens that is signal)
    is below this are drawn hatched grey in the cluster profiles: their chi is mostly noise."""
    warn_median_reliability: float = 0.5
    """Below this median component reliability the index page carries a banner saying so."""
    shared_profile_scale: bool = False
    """Draw every cluster page's profile on one colour scale, so that colours compare between
    pages: (-B, B) with B = max |profile| over all clusters and components ('zscore'), or the
    min to max over all clusters ('raw'). False: each page's scale spans its own profile, which
    shows its pattern best but makes a weak cluster look as strong as a strong one."""

    def __post_init__(self) -> None:
        for name in ("examples_per_cluster", "context_left", "context_right", "top_tokens", "example_seed"):
            check_number(f"report.{name}", getattr(self, name), low=0, integer=True)
        for name in ("min_reliability", "warn_median_reliability"):
            check_number(f"report.{name}", getattr(self, name), low=0, high=1, why="a reliability lies in [0, 1]")
        check_number("report.chi_block_tokens", self.chi_block_tokens, low=1, integer=True)
        if not isinstance(self.shared_profile_scale, bool):
            raise ValueError("report.shared_profile_scale must be true or false, got "
                             f"{self.shared_profile_scale!r}")
        if self.profile not in ("zscore", "raw"):
            raise ValueError(f"report.profile must be 'zscore' or 'raw', got {self.profile!r}")
        if isinstance(self.trace_components, str):
            self.trace_components = [self.trace_components]
        if self.trace_components is not None and not self.trace_components:
            raise ValueError("report.trace_components is empty; give glob patterns, or None for the default")
