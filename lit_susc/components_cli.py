"""``python run.py components --pretrained NAME_OR_DIR``: a model's built-in components, without its weights.

The model is built from its config on the meta device (only config.json is read, from the hub or a
local directory), so the components of a 7B model print in seconds: one line per component with
the number of weights it moves, then the count. ``--components`` takes the glob patterns a
``sample`` config would, to check a selection before a run.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Entry point of ``run.py components``; returns {component: weights}."""
    import argparse

    from .components import component_sizes, discover_components, select_components
    from .tinylm import load_causal_lm_on_meta

    parser = argparse.ArgumentParser(prog="lit-susc components", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="a transformers model name or local directory")
    parser.add_argument("--revision", default=None, help="hub revision (a training checkpoint, e.g. step1000)")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow model code from the hub")
    parser.add_argument("--components", nargs="*", default=["*"], help="glob patterns, as in a sample config")
    args = parser.parse_args(argv)
    model = load_causal_lm_on_meta(args.pretrained, revision=args.revision, trust_remote_code=args.trust_remote_code)
    sizes = component_sizes(model, select_components(discover_components(model), args.components))
    width = max(map(len, sizes))
    for name, size in sizes.items():
        print(f"{name:<{width}}  {size:>14,}")
    print(f"\n{len(sizes)} components of {type(model).__name__} ({model.config.model_type}), "
          f"{sum(sizes.values()):,} weights in all")
    return sizes
