"""The cheapest numerical multi-process check, in the default run: two processes of one CPU device each
train the same 3 steps as one process of two devices, and the losses agree (the slow test in
tests/test_multiprocess.py does 20 steps, three layouts and a resume)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.test_multiprocess import ROOT, TINY, _env, _free_port, _single_process_losses

# Each process joins the run, trains without a workdir and prints its losses.
TWO_PROCESS_SCRIPT = """
import json, sys
from jaxflows.train import initialize_distributed
initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
from jaxflows.train import apply_overrides, apply_process_settings, load_config, train
config = apply_overrides(load_config("experiments/configs/digits.py", smoke=True), sys.argv[3:])
apply_process_settings(config)
result = train(config, None, progress=False)
print(json.dumps([row["loss"] for row in result.history]))
"""
STEPS = ["num_steps=3", "eval_every=0"]


@pytest.mark.xdist_group("multiprocess")
def test_two_processes_and_two_devices_give_the_same_losses():
    address = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESS_SCRIPT, address, str(i), *TINY, *STEPS],
            cwd=ROOT,
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    per_process = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert per_process[0] == per_process[1]  # every process reports the all-reduced loss
    assert len(per_process[0]) == 3
    one_process = _single_process_losses(2, STEPS)
    # the same arithmetic up to the order of the cross-device sums: float32 rounding, ~1e-7 relative
    np.testing.assert_allclose(per_process[0], one_process, rtol=1e-5)
