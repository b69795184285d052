"""Small inputs shared by the tests that run the stages end to end on the session's tiny LM."""

from pathlib import Path

import yaml

from lit_susc.corpus import iter_texts


def short_documents(directory: Path, n: int = 40, chars: int = 40) -> Path:
    """``n`` .txt documents of ``chars`` characters of stdlib source each (about one context of 16 tokens)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(d.text for d in iter_texts("stdlib", max_documents=3))
    for i in range(n):
        (directory / f"doc{i:03d}.txt").write_text(text[i * chars:(i + 1) * chars])
    return directory


def sample_config(tiny_lm_dir, source, context: int, observed: int) -> dict:
    """A ``run.py sample`` config (without output_dir): every component, 2 chains of 4 draws."""
    return {"trainer": {"accelerator": "cpu", "enable_progress_bar": False},
            "model": {"pretrained": str(tiny_lm_dir), "components": ["*"],
                      "data": {"source": str(source), "context_length": context, "observation_contexts": observed,
                               "sampling_contexts": 4, "batch_size": 4},
                      "sgld": {"lr": 1e-4, "nbeta": 50.0, "chains": 2, "draws": 4, "burn_in": 2}}}


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_sample(tiny_lm_dir, source, run_dir: Path, context: int, observed: int) -> Path:
    """``run.py sample`` on the tiny LM (``sample_config``) into ``run_dir``; its config beside it."""
    import run

    config = sample_config(tiny_lm_dir, source, context, observed)
    config["model"]["output_dir"] = str(run_dir)
    run.main(["sample", "--config", str(write_yaml(run_dir.with_name(run_dir.name + ".yaml"), config))])
    return run_dir


def chi_cached_and_plain(model, counted, sampling, observation, components, sgld):
    """chi of ``components`` with and without the prefix cache (same seeds), each with the number of
    forward calls of the module ``counted`` (fewer with the cache, when it is used)."""
    from lit_susc import ComputeConfig, estimate_susceptibilities
    from lit_susc.lm import per_token_loss

    def run(cache: bool):
        calls = []
        hook = counted.register_forward_hook(lambda *a: calls.append(1))
        try:
            result = estimate_susceptibilities(
                model, per_token_loss, sampling, observation, components=components, sgld=sgld,
                trainer={"accelerator": "cpu", "enable_progress_bar": False}, compute=ComputeConfig(prefix_cache=cache))
        finally:
            hook.remove()
        return result.chi, len(calls)

    return run(True), run(False)


def assert_same_chi(cached, plain, components, rel: float = 1e-6) -> None:
    """Each component's chi rows agree to ``rel`` of the uncached row's largest value (which is not 0)."""
    for i, name in enumerate(components):
        scale = plain[i].abs().max()
        assert scale > 0, name
        assert (cached[i] - plain[i]).abs().max() <= rel * scale, name
