"""A run's chi and chi_se do not depend on how its (component, chain) units are split or interrupted."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lit_susc import SusceptibilityResult

SCRIPT = Path(__file__).parent / "scripts" / "linear_gaussian_run.py"
UNITS = 9  # 3 components x 3 chains


# One thread everywhere: Lightning gives each DDP process cpus/processes threads, and float32
# reductions split over a different number of threads round differently.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(run_dir, devices=1, *extra):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(run_dir), str(devices), *extra], check=False, env=ENV,
                          timeout=300, capture_output=True, text=True)
    # The end of the traceback, and every line naming an error: a crashed rank 1 is reported by rank 0
    # as a closed connection, its own traceback further up.
    errors = "\n".join(line for line in proc.stderr.splitlines() if "Error" in line or "rank1" in line)
    assert proc.returncode == 0, errors[-4000:] + "\n...\n" + proc.stderr[-3000:]
    return SusceptibilityResult.load(run_dir)


def _max_relative_difference(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_two_process_ddp_equals_one_process(tmp_path):
    single = _run(tmp_path / "one")
    double = _run(tmp_path / "two", 2)
    assert double.components == single.components
    assert _max_relative_difference(double.chi, single.chi) <= 1e-9
    assert _max_relative_difference(double.chi_se, single.chi_se) <= 1e-9
    assert double.llc == single.llc or all(
        abs(double.llc[c]["mean"] - single.llc[c]["mean"]) <= 1e-9 * abs(single.llc[c]["mean"]) for c in single.llc)


def test_auto_schedule_and_rounds_on_two_processes_equal_one_process(tmp_path):
    single = _run(tmp_path / "one", 1, "--auto")
    double = _run(tmp_path / "two", 2, "--auto")
    assert double.schedule == single.schedule
    assert max(plan["rounds"] for plan in single.schedule.values()) > 1  # the target made some chains go on
    assert _max_relative_difference(double.chi, single.chi) <= 1e-9
    assert _max_relative_difference(double.chi_se, single.chi_se) <= 1e-9


def _kill_after(run_dir, done_units, *extra):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), "1", "--slow", *extra], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = run_dir / "state" / "units"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(units.glob("*/done.json"))) < done_units:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list(units.glob("*/done.json")))


def test_a_killed_run_resumes_to_the_same_chi(tmp_path):
    reference = _run(tmp_path / "uninterrupted")
    run_dir = tmp_path / "killed"
    done = _kill_after(run_dir, 2)
    assert 2 <= done < UNITS, done  # killed part-way
    assert not (run_dir / "summary.json").exists()  # nothing that looks finished
    resumed = _run(run_dir)
    assert torch.equal(resumed.chi, reference.chi)
    assert torch.equal(resumed.chi_se, reference.chi_se)
    assert resumed.reliability == reference.reliability


def test_a_run_killed_in_a_later_round_resumes_to_the_same_chi(tmp_path):
    reference = _run(tmp_path / "uninterrupted", 1, "--auto")
    run_dir = tmp_path / "killed"
    done = _kill_after(run_dir, UNITS + 1, "--auto")  # past the first round
    assert (run_dir / "state" / "rounds" / "round-000.json").exists() and not (run_dir / "summary.json").exists(), done
    resumed = _run(run_dir, 1, "--auto")
    assert resumed.schedule == reference.schedule
    assert torch.equal(resumed.chi, reference.chi) and torch.equal(resumed.chi_se, reference.chi_se)


def test_several_devices_with_strategy_auto_get_independent_chains():
    """Lightning's "auto" on several devices is plain DDP, which averages gradients across ranks (and
    refuses a sampler whose frozen parameters get none): the Trainer gets the independent-chains
    strategy instead, as for "ddp"; one device keeps "auto"."""
    from lit_susc.strategy import IndependentChainsStrategy, chains_strategy

    assert isinstance(chains_strategy("auto", 2, "cpu"), IndependentChainsStrategy)
    assert isinstance(chains_strategy("auto", [0, 1], "gpu"), IndependentChainsStrategy)
    assert chains_strategy("auto", 1, "cpu") == "auto"
    assert chains_strategy("auto", "auto", "cpu") == "auto"
