"""lit-susc's command line (also installed as ``lit-susc``).

    python run.py sample --config configs/quickstart.yaml
    python run.py sample --config configs/quickstart.yaml --print_config
    python run.py aux fit --config configs/aux_fit_quickstart.yaml
    python run.py aux predict --config configs/aux_predict_quickstart.yaml
    python run.py cluster --config configs/cluster.yaml

Known bad input ends with one ``lit-susc: error: ...`` line and exit status 2; set
``LIT_SUSC_DEBUG=1`` for the full traceback.
"""

import os
import sys


def main(argv=None) -> None:
    from callbacks import ChainDivergedError
    from lit_susc.cli import main as cli_main
    from lit_susc.engine import RunDirectoryError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["aux"]:
            from lit_susc.aux.cli import main as aux_main

            aux_main(argv[1:])
        elif argv[:1] == ["cluster"]:
            from lit_susc.cluster.stage import main as cluster_main

            cluster_main(argv[1:])
        else:
            cli_main(argv)
    except (ValueError, FileNotFoundError, FloatingPointError, ChainDivergedError, RunDirectoryError) as err:
        if os.environ.get("LIT_SUSC_DEBUG"):
            raise
        print(f"lit-susc: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
