"""The paper-comparison entries (experiments/compare*.py) end to end at a tiny size."""

import textwrap

from experiments import compare_1x1

TINY_CONFIG = """
from jaxflows.train.config import TrainConfig


def get_config():
    return TrainConfig(
        dataset="digits", model={"levels": 1, "steps": 1, "hidden": 8, "conv": "lu"}, batch_size=16,
        init_batch_size=64, warmup_steps=2, num_steps=3, eval_batch_size=512, prng_impl="rbg",
    )
"""


# Two variants (a subset via --only keeps the test within ~30 s: each variant compiles its own step).
def test_compare_1x1_writes_table_and_plot(tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text(textwrap.dedent(TINY_CONFIG))
    out = tmp_path / "results"
    result = compare_1x1.main(
        ["--config", str(config), "--steps", "3", "--seeds", "1", "--out", str(out), "--only", "plain,QR"]
    )
    text = (out / "compare_1x1.md").read_text()
    assert (out / "compare_1x1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for line in ("- machine:", "- dataset: digits", "- command: `", "--steps 3"):
        assert line in text
    rows = [r for r in text.splitlines() if r.startswith("| ") and not r.startswith("| 1x1 conv")]
    assert [r.split("|")[1].strip() for r in rows] == ["plain", "QR"]
    assert len(result["runs"]) == 2
    assert all(r.metrics["epoch_s"] > 0 and r.metrics["params"] > 0 for r in result["runs"])
