"""The ``analyse`` stage: the leak check of a finished sample run and its aux model.

    python run.py analyse --sample_dir runs/quickstart/sample --aux_dir runs/quickstart/aux_fit \\
        --output_dir runs/quickstart/analyse --k 50

Writes leak.parquet, leak.png and leak.json (last) to ``output_dir`` (see lit_susc.analysis.leak).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..config import check_number
from .leak import LeakConfig, run_leak_check


@dataclass
class AnalyseConfig(LeakConfig):
    """The leak check's inputs and settings."""

    sample_dir: str = ""
    """A finished ``run.py sample`` directory (the ground truth)."""
    aux_dir: str = ""
    """The ``run.py aux fit`` directory of an aux model trained on ``sample_dir``."""
    output_dir: str = ""
    """Where leak.parquet, leak.png and leak.json go."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda', ..."""
    trust_remote_code: bool = False
    """Allow model code from the hub for the base model."""

    def __post_init__(self) -> None:
        # before LeakConfig's own checks, which name no section and let NaN or 2.5 through
        for name in ("k", "batch_size"):
            check_number(f"analyse.{name}", getattr(self, name), low=1, integer=True)
        check_number("analyse.max_tokens", self.max_tokens, low=2, integer=True, optional=True)
        check_number("analyse.seed", self.seed, low=0, integer=True)
        super().__post_init__()


def run_analyse_stage(config: AnalyseConfig) -> Path:
    for name in ("sample_dir", "aux_dir", "output_dir"):
        if not getattr(config, name):
            raise ValueError(f"analyse needs --{name}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    leak = LeakConfig(**{f.name: getattr(config, f.name) for f in fields(LeakConfig)})
    table = run_leak_check(config.sample_dir, config.aux_dir, config.output_dir, leak, device=device,
                           trust_remote_code=config.trust_remote_code)
    out = Path(config.output_dir)
    rows = table.to_pylist()
    print(f"\nlit-susc: leak check over {rows[0]['n_tokens']} validation tokens written to {out.resolve()}")
    print("  layer  CKA truth  CKA aux  Jaccard truth  Jaccard aux")
    for r in rows:
        print(f"  {r['layer']:5d}  {r['cka_ground_truth']:9.3f}  {r['cka_aux']:7.3f}  "
              f"{r['jaccard_ground_truth']:13.3f}  {r['jaccard_aux']:11.3f}")
    return out


def main(argv: list[str] | None = None) -> Path:
    from ..stage_cli import parse_settings

    return run_analyse_stage(parse_settings(AnalyseConfig, argv, "lit-susc analyse", __doc__))
