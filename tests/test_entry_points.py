"""Every command-line entry point under benchmarks/ and experiments/ runs, as `python -m` runs it: each
prints its --help (the default run, one process for all of them), and each runs for real at a tiny
size in a subprocess (the default run where that takes seconds, -m slow otherwise), so a flag renamed
in one script cannot break another that calls it unnoticed (compare_normflows once passed train_step
a --steps it no longer took)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fashion_mnist import require_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent
slow = pytest.mark.slow

# Entry points whose tiny real run is another test (in-process calls of their main(), or below).
RUN_ELSEWHERE = {
    "experiments.compare_1x1": "tests/test_experiments.py",
    "experiments.compare_dequantization": "tests/test_experiments.py (slow)",
    "experiments.compare_permutations": "tests/test_experiments.py",
    "experiments.table3_parameters": "tests/test_experiments.py",
    "experiments.table6_series_terms": "tests/test_experiments.py (slow)",
    "experiments.export_pretrained": "test_a_trained_workdir_exports_and_manipulates_attributes (slow)",
    "experiments.attribute_manipulation": "test_a_trained_workdir_exports_and_manipulates_attributes (slow)",
    "experiments.equal_time": "tests/test_experiments.py (slow)",
    "experiments.tarflow_samples": "tests/test_experiments.py (slow)",
}

TINY_CONFIG = """
from jaxflows.train.config import TrainConfig


def get_config():
    return TrainConfig(
        dataset="digits", model={"levels": 1, "depth": 1, "hidden": 8, "conv": "lu"}, batch_size=16,
        init_batch_size=64, warmup_steps=2, num_steps=2, eval_batch_size=512, prng_impl="rbg",
        sample_temperatures=(1.0,), samples_per_temperature=4,
    )
"""
TINY_TRAIN = ["model.depth=1", "model.hidden=8", "batch_size=16", "init_batch_size=64", "num_steps=2"]
# benchmarks.compare_normflows' reference step, without torch: prints what normflows_glow.py prints
NORMFLOWS_STUB = 'import sys\nassert len(sys.argv) == 6, sys.argv\nprint("params=1 step=1.0ms imgs/s=2.0")\n'
GLOW = ["--levels", "1", "--depth", "1", "--hidden", "8", "--batch", "2"]


# Scripts with a __main__ that are not argparse entry points of this environment.
NOT_ENTRY_POINTS = {"benchmarks.normflows_gpu"}  # positional L K H B STEPS; torch and CUDA (gpu.sh)


def entry_points() -> list[str]:
    """Modules of benchmarks/ and experiments/ that `python -m` runs (they have a __main__ block)."""
    found = []
    for package in ("benchmarks", "experiments"):
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"{package}.{path.stem}"
            if 'if __name__ == "__main__":' in path.read_text() and name not in NOT_ENTRY_POINTS:
                found.append(name)
    return found


def write_inputs(tmp: Path) -> None:
    """The files `tiny_runs(tmp)` names."""
    (tmp / "tiny_config.py").write_text(textwrap.dedent(TINY_CONFIG))
    (tmp / "normflows_stub.py").write_text(NORMFLOWS_STUB)


def tiny_runs(tmp: Path) -> dict[str, list[str]]:
    """Module -> arguments of a tiny real run (`write_inputs(tmp)` writes the files they name)."""
    config, stub = tmp / "tiny_config.py", tmp / "normflows_stub.py"
    compare = ["--config", str(config), "--seeds", "1", "--out", str(tmp / "out")]
    return {
        "benchmarks.compare_normflows": [
            *["--torch-python", sys.executable, "--normflows-script", str(stub)],
            *[*GLOW, "--iters", "1", "--rounds", "1"],
        ],
        "benchmarks.conv": ["--batch", "1", "--depth", "1", "--repeats", "1"],
        "benchmarks.couplings": ["--rounds", "1", "--steps", "1", "--batch", "2"],
        "benchmarks.emerging": ["--batch", "1", "--size", "4", "--channels", "4", "--repeats", "1"],
        "benchmarks.maf_peers": [
            *["--dim", "2", "--depth", "1", "--hidden", "4", "--batch", "4", "--steps", "1", "--rounds", "1"]
        ],
        "benchmarks.matrix_exp": [
            *["--expm-size", "3", "--expm-samples", "2", "--batch", "2", "--size", "4", "--channels", "4"],
            *["--rank", "1", "--coupling-hidden", "4", "--model-image", "4", "--model-batch", "2"],
            *["--model-levels", "1", "--model-steps", "1", "--model-hidden", "4", "--repeats", "1"],
        ],
        "benchmarks.memory": [
            *["--depths", "1", "--levels", "1", "--hidden", "8", "--batch", "2", "--image", "8x8x1"]
        ],
        "benchmarks.multiprocess": [
            *GLOW,
            "--image",
            "8x8x2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "1",
        ],
        "benchmarks.small_matmul": ["--batch", "2", "--repeats", "1"],
        "benchmarks.startup": ["--config", "experiments/configs/digits.py", "--set", *TINY_TRAIN],
        "benchmarks.train_step": [*GLOW, "--image", "8x8x1", "--iters", "1", "--warmup", "0"],
        "experiments.compare_convs": [*compare, "--set", "num_steps=2", "--only", "1x1 (LU)"],
        "experiments.compare_coupling": [
            *[*compare, "--set", "num_steps=2", "--learning-rates", "0.001", "--only", "additive lr=0.001"]
        ],
        "experiments.compare_models": [*compare, "--set", "num_steps=2", "--only", "Glow"],
        "experiments.compare_spline": [*compare, "--set", "num_steps=2", "--only", "affine"],
        "experiments.matched_flows": [
            *["autoregressive", "--out", str(tmp / "out"), "--datasets", "digits", "--flows", "MAF"],
            *["--steps", "2"],
        ],
        "experiments.ood": ["--count", "2", "--out", str(tmp / "out")],
        "experiments.train": [
            *["--config", "experiments/configs/digits.py", "--smoke", "--no_progress"],
            *["--workdir", str(tmp / "run"), "--set", *TINY_TRAIN],
        ],
        "experiments.vector_flows": [
            *["--out", str(tmp / "out"), "--steps", "2", "--image-steps", "2", "--images", "digits"],
            *["--only", "planar"],
        ],
    }


def _run(module: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    peers = ("NORMFLOWS_PYTHON", "FLOWJAX_PYTHON", "ZUKO_PYTHON")  # the benchmarks' optional peers
    env = {k: v for k, v in os.environ.items() if k not in peers} | {"JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, (
        f"exit status {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )


HELP_SCRIPT = """
import contextlib, io, json, runpy, sys
results = {}
for module in sys.argv[1:]:
    sys.argv = [module, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = "no exit"
    except SystemExit as exit:
        code = exit.code
    except BaseException as error:
        code = repr(error)
    results[module] = [code if code is None or isinstance(code, int) else str(code), out.getvalue()]
print(json.dumps(results))
"""


def test_every_entry_point_prints_its_help():
    modules = entry_points()
    done = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {m: code for m, (code, text) in results.items() if code not in (0, None) or "usage:" not in text}
    assert not failed, f"--help failed (module: exit status or error): {failed}"


def test_every_entry_point_has_a_tiny_run(tmp_path):
    """A new entry point adds its tiny run to `tiny_runs` (or names the test that runs it)."""
    missing = set(entry_points()) - set(tiny_runs(tmp_path)) - set(RUN_ELSEWHERE)
    assert not missing, f"entry points without a smoke test: {sorted(missing)}"
    assert set(RUN_ELSEWHERE) <= set(entry_points())


# The default run's tiny run (~20 s) also runs benchmarks/train_step.py with the flags it passes; the
# others compile whole train steps (or several) and run under -m slow.
DEFAULT_RUN = ("benchmarks.compare_normflows",)
NEEDS_FASHION_MNIST = ("experiments.ood",)
TABLE_OUTPUT = ("benchmarks.emerging", "benchmarks.matrix_exp")  # benchmarks that print tables, not JSON


def _marks(module: str):
    return [] if module in DEFAULT_RUN else [slow]


@pytest.mark.parametrize("module", [pytest.param(m, marks=_marks(m)) for m in sorted(tiny_runs(Path("tmp")))])
def test_entry_point_runs_at_a_tiny_size(module, tmp_path):
    if module in NEEDS_FASHION_MNIST:
        require_fashion_mnist()
    write_inputs(tmp_path)
    done = _run(module, tiny_runs(tmp_path)[module])
    _check(done)
    if module.startswith("benchmarks.") and module not in TABLE_OUTPUT:  # the last line is one JSON object
        json.loads(done.stdout.strip().splitlines()[-1])


@slow
def test_a_trained_workdir_exports_and_manipulates_attributes(tmp_path):
    """experiments.train, then experiments.export_pretrained and experiments.attribute_manipulation on
    its workdir (digits has labels)."""
    workdir = tmp_path / "run"
    write_inputs(tmp_path)
    _check(_run("experiments.train", tiny_runs(tmp_path)["experiments.train"]))
    export = ["--command", "test", "--commit", "0" * 7, "--out", str(tmp_path / "models")]
    _check(_run("experiments.export_pretrained", [str(workdir), "tiny_digits", *export]))
    assert list((tmp_path / "models").glob("tiny_digits*"))
    out = tmp_path / "attribute.png"
    args = ["--workdir", str(workdir), "--without", "0", "--with", "1", "--examples", "4", "--rows", "2"]
    _check(_run("experiments.attribute_manipulation", [*args, "--alphas", "0,1", "--out", str(out)]))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ood_groups_glow_levels_and_tarflow_blocks():
    from experiments.ood import layer_group

    assert layer_group("level1/flow_steps/3/coupling") == "level1 coupling"
    assert layer_group("level2/split") == "level2 split prior"
    assert layer_group("blocks/0/natural") == "block  1 (natural order)"
    assert layer_group("blocks/1/reversed") == "block  4 (reversed order)"
    assert layer_group("patchify") == "patchify"
    assert layer_group("base") == "base N(0, I)"
