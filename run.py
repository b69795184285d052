"""lit-susc's command line (also installed as ``lit-susc``).

    python run.py pipeline --config configs/quickstart.yaml [--from-stage cluster]
    python run.py sample --config configs/quickstart.yaml
    python run.py sample --config configs/quickstart.yaml --print_config
    python run.py aux fit --config configs/aux_fit_pythia-1.4b.yaml
    python run.py aux predict --config configs/aux_predict_pythia-1.4b.yaml
    python run.py cluster --config runs/quickstart/pipeline/cluster.yaml   (the pipeline writes it, from
                                             configs/quickstart.yaml's cluster section)
    python run.py analyse --config ...       (the leak check; the pipeline writes its config)
    python run.py report --config ...        (the cluster browser; likewise)
    python run.py bif --config configs/bif_quickstart.yaml
    python run.py calibrate --config configs/calibrate_quickstart.yaml   (lr x nbeta x localization sweep)

Known bad input ends with one ``lit-susc: error: ...`` line and exit status 2; set
``LIT_SUSC_DEBUG=1`` for the full traceback.
"""

import importlib
import os
import sys

COMMANDS = {
    "pipeline": "lit_susc.pipeline",
    "aux": "lit_susc.aux.cli",
    "cluster": "lit_susc.cluster.stage",
    "analyse": "lit_susc.analysis.stage",
    "report": "lit_susc.report.stage",
    "calibrate": "lit_susc.calibration_cli",
}
"""Commands with their own parser; ``sample`` and ``bif`` go to LightningCLI (lit_susc.cli)."""


def main(argv=None) -> None:
    from callbacks import ChainDivergedError
    from lit_susc.cli import main as cli_main
    from lit_susc.pipeline import StageFailedError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] and argv[0] in COMMANDS:
            importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        else:
            cli_main(argv)
    except (ValueError, FileNotFoundError, FloatingPointError, ChainDivergedError, StageFailedError) as err:
        if os.environ.get("LIT_SUSC_DEBUG"):
            raise
        print(f"lit-susc: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
