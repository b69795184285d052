"""lit-susc's command line (also installed as ``lit-susc``).

    python run.py pipeline --config configs/quickstart.yaml [--from-stage cluster]
    python run.py sample --config configs/pythia-1.4b.yaml
    python run.py sample --config configs/pythia-1.4b.yaml --print_config
    python run.py aux fit --config configs/aux_fit_pythia-1.4b.yaml
    python run.py aux predict --config configs/aux_predict_pythia-1.4b.yaml
    python run.py cluster --config runs/quickstart/pipeline/cluster.yaml   (the pipeline writes it, from
                                             configs/quickstart.yaml's cluster section)
    python run.py analyse --config ...       (the leak check; the pipeline writes its config)
    python run.py report --config ...        (the cluster browser; likewise)
    python run.py bif --config configs/bif_quickstart.yaml
    python run.py develop --config configs/develop_quickstart.yaml   (sample every training checkpoint, compare)
    python run.py calibrate --config configs/calibrate_quickstart.yaml   (lr x nbeta x localization sweep)
    python run.py components --pretrained Qwen/Qwen2.5-0.5B   (its 409 components, from config.json alone)

Known bad input ends with one ``lit-susc: error: ...`` line and exit status 2; set
``LIT_SUSC_DEBUG=1`` for the full traceback.
"""

import importlib
import os
import sys

COMMANDS = {
    "pipeline": "lit_susc.pipeline",
    "develop": "lit_susc.develop",
    "aux": "lit_susc.aux.cli",
    "cluster": "lit_susc.cluster.stage",
    "analyse": "lit_susc.analysis.stage",
    "report": "lit_susc.report.stage",
    "calibrate": "lit_susc.calibration_cli",
    "components": "lit_susc.components_cli",
}
"""Commands with their own parser; ``sample`` and ``bif`` are LightningCLIs (lit_susc.cli)."""

SUBCOMMANDS = {
    "pipeline": "every stage from one YAML (model, sample, aux_fit, aux_predict, cluster, analyse, report)",
    "sample": "chi, its standard error and the LLC of every component (SGLD chains)",
    "bif": "Bayesian influence functions of training samples on queries",
    "develop": "sample every training checkpoint of a model; LLC curves, chi's changes, a joint PCA",
    "calibrate": "an lr x nbeta x localization sweep and the recommended sgld: block",
    "components": "a model's components and their sizes, from its config alone (no weights)",
    "aux": "aux fit: learn chi's PCs from activations; aux predict: upsample to many tokens",
    "cluster": "whitening, the k-NN graph and local clustering",
    "analyse": "the leak check (CKA and Jaccard-kNN by layer)",
    "report": "the cluster browser (HTML)",
}
"""Every subcommand, with what it does (the top-level ``--help``)."""


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    return ("usage: lit-susc <subcommand> --config FILE [options]   (python run.py ... from a checkout)\n\n"
            "subcommands:\n" + "\n".join(lines) + "\n\n"
            "lit-susc <subcommand> --help shows a subcommand's options; see README.md for the quickstart.")


def main(argv=None) -> None:
    from callbacks import ChainDivergedError
    from lit_susc.cli import main as cli_main
    from lit_susc.console import quiet_lightning
    from lit_susc.stage_process import StageFailedError, end_with_the_runner

    argv = sys.argv[1:] if argv is None else list(argv)
    end_with_the_runner()
    quiet_lightning()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    try:
        if argv[0] in COMMANDS:
            importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        elif argv[0] in SUBCOMMANDS:
            cli_main(argv)
        else:
            raise ValueError(f"unknown subcommand {argv[0]!r}; choose one of {', '.join(SUBCOMMANDS)} "
                             "(lit-susc --help says what each does)")
    except (ValueError, FileNotFoundError, FloatingPointError, ChainDivergedError, StageFailedError) as err:
        if os.environ.get("LIT_SUSC_DEBUG"):
            raise
        # one line, whatever the message quotes (a library's reason may span several)
        print("lit-susc: error:", " ".join(str(err).split()), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
