"""The paper-comparison entries (experiments/compare*.py) end to end at a tiny size."""

import json
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import compare_1x1

TINY_CONFIG = """
from jaxflows.train.config import TrainConfig


def get_config():
    return TrainConfig(
        dataset="digits", model={"levels": 1, "depth": 1, "hidden": 8, "conv": "lu"}, batch_size=16,
        init_batch_size=64, warmup_steps=2, num_steps=3, eval_batch_size=512, prng_impl="rbg",
    )
"""


# Two variants (a subset via --only keeps the test within ~30 s: each variant compiles its own step).
@pytest.mark.slow  # default-run budget: tests/test_entry_points.py runs every entry point's --help by default
def test_compare_1x1_writes_table_and_plot(tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text(textwrap.dedent(TINY_CONFIG))
    out = tmp_path / "results"
    argv = ["--config", str(config), "--set", "num_steps=3", "--seeds", "1", "--out", str(out)]
    result = compare_1x1.main([*argv, "--only", "plain,QR"])
    text = (out / "compare_1x1.md").read_text()
    assert (out / "compare_1x1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for line in ("- machine:", "- dataset: digits", "- command: `", "--set num_steps=3"):
        assert line in text
    rows = [r for r in text.splitlines() if r.startswith("| ") and not r.startswith("| 1x1 conv")]
    assert [r.split("|")[1].strip() for r in rows] == ["plain", "QR"]
    assert len(result["runs"]) == 2
    assert all(r.metrics["epoch_s"] > 0 and r.metrics["params"] > 0 for r in result["runs"])


def test_table3_counts_parameters_by_family(tmp_path):
    from experiments import table3_parameters

    text = table3_parameters.main(["--out", str(tmp_path)]).read_text()
    rows = {r.split("|")[1].strip(): r for r in text.splitlines() if r.startswith("| ") and "**" in r}
    assert {"Glow", "Emerging", "MEF"} <= set(rows)
    assert "- command: `python -m experiments.table3_parameters`" in text


@pytest.mark.slow
def test_table6_and_dequantization_entries_run(tmp_path):
    from experiments import compare_dequantization, table6_series_terms

    table6 = table6_series_terms.main(
        ["--every", "2", "--set", "dataset=digits", "num_steps=4", "model.levels=1", "model.depth=1",
         "model.hidden=8", "batch_size=16", "init_batch_size=64", "--out", str(tmp_path)]
    ).read_text()  # fmt: skip
    assert "| matrix-exp coupling (per call, as the official code) |" in table6
    config = tmp_path / "tiny.py"
    config.write_text(textwrap.dedent(TINY_CONFIG))
    deq = compare_dequantization.main(
        ["--config", str(config), "--iw", "2", "--out", str(tmp_path)]
    ).read_text()
    assert "| uniform | 3 |" in deq and "| variational | 3 |" in deq


@pytest.mark.slow  # default-run budget (trains 6 tiny models)
def test_compare_permutations_writes_table_curves_and_ordering(tmp_path):
    from experiments import compare_permutations

    config = tmp_path / "tiny.py"
    config.write_text(textwrap.dedent(TINY_CONFIG))
    out = tmp_path / "results"
    argv = ["--config", str(config), "--set", "num_steps=3", "log_every=1", "--seeds", "2", "--out", str(out)]
    only = "additive + reverse,additive + shuffle,additive + 1x1 conv (LU)"
    result = compare_permutations.main([*argv, "--only", only])
    text = (out / "compare_permutations.md").read_text()
    assert (out / "compare_permutations_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "additive: the paper's ordering 1x1 < shuffle < reverse" in text
    assert len(result["runs"]) == 6
    assert all(len(r.metrics["curve"]) == 3 for r in result["runs"])


@pytest.mark.slow  # default-run budget (trains every vector flow); test_vector_flows checks its tables
def test_vector_flows_writes_table_plots_and_image_estimate(tmp_path):
    from experiments import vector_flows

    argv = ["--out", str(tmp_path), "--steps", "2", "--image-steps", "2", "--images", "digits"]
    result = vector_flows.main([*argv, "--only", "planar,affine coupling"])
    text = (tmp_path / "vector_flows.md").read_text()
    for name in ("vector_flows_densities.png", "vector_flows_image_samples.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [r.split("|")[1:3] for r in text.splitlines() if r.startswith("| ") and "density |" not in r]
    assert [[c.strip() for c in r] for r in rows] == [
        ["two moons", "planar"],
        ["two moons", "affine coupling"],
        ["ring of 8 Gaussians", "true density (reference)"],
        ["ring of 8 Gaussians", "planar"],
        ["ring of 8 Gaussians", "affine coupling"],
    ]
    assert "- command: `python -m experiments.vector_flows --out" in text and "- commit: " in text
    assert "digits" in text and "truncated at n = 5 terms" in text
    saved = json.loads((tmp_path / "vector_flows.json").read_text())
    assert set(saved["images"]["bits_per_dim"]) == {"5", "20"}
    for row in result["rows"]:
        if row["flow"] != "data":  # the flow's own log-det agrees with slogdet of its Jacobian
            np.testing.assert_allclose(row["nll"][0], row["nll_exact_jacobian"][0], rtol=1e-4)


def test_equal_time_reads_each_mark_at_the_first_evaluation_after_it(tmp_path):
    from experiments import equal_time

    rows = [
        {"step": 10.0, "train_seconds": 290.0},
        {"step": 11.0, "train_seconds": 301.0, "eval_bits_per_dim": 5.0},
        {"step": 30.0, "train_seconds": 905.0, "eval_bits_per_dim": 4.0},
    ]
    curve = equal_time.held_out_curve(rows)
    assert curve == [(301.0, 11, 5.0), (905.0, 30, 4.0)]
    assert equal_time.read_at(curve, 900.0) == (905.0, 30, 4.0) and equal_time.read_at(curve, 906.0) is None
    (tmp_path / "equal_time.log").write_text(
        "held-out bits/dim (flow given the label):             3.5000\n"
        "held-out bits/dim (flow, marginal over classes): 3.6000\n"
        "Bayes-rule accuracy (argmax_c log p(x|c) + log p(c)): 0.6810\n"
        "held-out bits/dim (flow, without EMA):        3.4000\n"
    )
    scores = {"final": 3.5, "final_marginal": 3.6, "bayes_accuracy": 0.681, "final_raw": 3.4}
    assert equal_time.final_scores(tmp_path) == scores


FAKE_TRAIN = """#!/bin/bash
# experiments.train as a preempted run: checkpoints and exits 0 on SIGTERM
trap 'echo "stopped by SIGTERM at step 7; checkpoint saved in $PWD"; exit 0' TERM
echo "step 1"
touch "$STARTED"
while true; do sleep 0.05; done
"""


def test_equal_time_forwards_a_stop_to_its_run_and_exits_nonzero(tmp_path, monkeypatch):
    """A SIGTERM to `equal_time train` reaches the training process (which checkpoints and exits 0,
    as a preempted run), and `train` then fails, so a chain of runs stops rather than going on."""
    import os
    import signal
    import sys
    import threading
    import time

    from experiments import equal_time

    fake = tmp_path / "python"
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    started = tmp_path / "started"
    monkeypatch.setenv("STARTED", str(started))
    monkeypatch.setattr(sys, "executable", str(fake))
    (tmp_path / "glow").mkdir()
    (tmp_path / "glow" / "equal_time.json").write_text('{"calibration_step_s": 0.5}')

    def stop_when_started():
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_when_started, daemon=True).start()
    with pytest.raises(SystemExit, match="stopped before its budget"):
        equal_time.run_training("glow", tmp_path, 1.0, [])
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    log = (tmp_path / "glow" / "equal_time.log").read_text()
    assert "step 1" in log and "stopped by SIGTERM at step 7" in log


@pytest.mark.slow
def test_equal_time_trains_a_family_for_its_budget_and_reports_it(tmp_path):
    from experiments import equal_time

    tiny = ["dataset=digits", "model.levels=1", "model.depth=1", "model.hidden=8"]
    tiny += ["batch_size=16", "init_batch_size=64", "eval_batch_size=512", "samples_per_temperature=4"]
    equal_time.main(["train", "glow", "--root", str(tmp_path), "--minutes", "0.1", "--set", *tiny])
    rows = json.loads((tmp_path / "glow" / "equal_time.json").read_text())
    assert rows["calibration_step_s"] > 0
    tarflow = ["dataset=digits", "model.width=16", "model.blocks=2", "model.layers_per_block=1"]
    tarflow += ["model.heads=2", "batch_size=16", "init_batch_size=64", "eval_batch_size=512"]
    equal_time.main(
        ["train", "tarflow_noise", "--root", str(tmp_path), "--minutes", "0.05", "--set", *tarflow]
    )
    equal_time.main(["report", "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    summary, noise = json.loads((tmp_path / "out" / "equal_time.json").read_text())
    assert noise["family"] == "tarflow_noise" and 0 <= noise["bayes_accuracy"] <= 1
    guided = {p.name for p in (tmp_path / "out").glob("equal_time_tarflow_noise_w*.png")}
    assert guided == {f"equal_time_tarflow_noise_w{w}{d}.png" for w in (0, 1, 3) for d in ("", "_denoised")}
    assert summary["family"] == "glow" and summary["parameters"] > 0 and summary["gflop_per_step"] > 0
    # the schedule is sized to the budget from a measured step time: the run ends at the 6-second
    # limit, or with the whole calibrated schedule when its steps ran faster than the calibration's
    calibrated = round(6.0 / summary["calibration"]["calibration_step_s"])
    assert summary["train_seconds"] > 6.0 or summary["steps"] == calibrated
    assert summary["read_at"]["0.1 min"] is not None and "final_raw" in summary
    assert (tmp_path / "out" / "equal_time_curves.png").exists()


@pytest.mark.slow
def test_tarflow_samples_writes_guided_and_denoised_grids_of_a_noise_trained_model(tmp_path):
    from experiments import tarflow_samples
    from jaxflows.train import TrainConfig, train

    model = {"name": "tarflow", "patch_size": 4, "width": 16, "blocks": 2, "layers_per_block": 1, "heads": 2}
    config = TrainConfig(
        dataset="digits", model={**model, "num_classes": 10, "noise_std": 0.025}, batch_size=16,
        init_batch_size=64, num_steps=30, learning_rate=1e-2, warmup_steps=2, eval_every=0,
        samples_per_temperature=2, prng_impl="rbg",
    )  # fmt: skip
    train(config, tmp_path / "run", progress=False)
    out = tmp_path / "out"
    # a process whose PRNG differs from the run's (the tests' is the run's rbg): its checkpointed
    # key has the run's shape, so the command must take the run's PRNG
    jax.config.update("jax_default_prng_impl", "threefry2x32")
    try:
        tarflow_samples.main(["--workdir", str(tmp_path / "run"), "--out", str(out), "--guidance", "0", "2"])
    finally:
        jax.config.update("jax_default_prng_impl", "rbg")
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"tarflow_samples_w{w}{d}.png" for w in (0, 2) for d in ("", "_denoised")]
    plain, guided = (np.asarray(Image.open(out / f"tarflow_samples_w{w}.png")) for w in (0, 2))
    assert plain.shape == guided.shape and not np.array_equal(plain, guided)


@pytest.mark.slow
def test_matched_flows_retime_replaces_only_the_timings(tmp_path):
    from experiments import matched_flows

    argv = [
        "autoregressive",
        "--out",
        str(tmp_path),
        "--datasets",
        "digits",
        "--flows",
        "MAF",
        "--steps",
        "2",
    ]
    matched_flows.main(argv)
    path = tmp_path / "matched_flows_autoregressive.json"
    page = json.loads(path.read_text())
    (row,) = [r for r in page["rows"] if r["flow"] == "MAF" and r["seed"] == 0]
    row |= {"sample_s": -1.0, "density_s": -1.0, "timed_examples": 64}  # timed under load, say
    path.write_text(json.dumps(page))
    matched_flows.main(["autoregressive", "--out", str(tmp_path), "--retime"])
    after = json.loads(path.read_text())
    (timed,) = [r for r in after["rows"] if "sample_s" in r]
    assert timed["sample_s"] > 0 and timed["density_s"] > 0
    assert (
        timed["bits_per_dim"] == row["bits_per_dim"] and "timings re-measured (`--retime`):" in after["facts"]
    )
