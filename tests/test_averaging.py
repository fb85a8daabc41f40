"""--ema: a moving average of the weights, validated every epoch, kept in last.pt, resumed exactly,
and saved as best.pt's weights when it validates better."""

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_SHAPES, copy_run, run, shared_run

pytestmark = pytest.mark.slow  # every test here trains in a subprocess

EMA = ["--ema", "0.7", "--ema-every", "2"]  # 4 steps an epoch: 2 updates an epoch
TIMING = ("_seconds", "images_per_second")


def rows_of(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.endswith(TIMING)} for row in rows]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs with --ema in one go (read only)."""
    return shared_run(tmp_path_factory, "ema", *TINY_SHAPES, *EMA, "--epochs", "2")


def test_the_average_is_validated_kept_and_saved_when_better(ema_run: Path) -> None:
    rows = rows_of(ema_run)
    assert all({"ema_val_loss", "ema_val_top1", "ema_val_top5"} <= row.keys() for row in rows)
    assert rows[0]["ema_val_loss"] != rows[0]["val_loss"]  # another set of weights
    last = torch.load(ema_run / "last.pt", weights_only=True)
    ema = last["ema"]
    assert int(ema["n_averaged"]) == 4  # 8 steps, one update every 2
    weights = {key.removeprefix("module."): value for key, value in ema.items() if key != "n_averaged"}
    assert weights.keys() == last["model"].keys()
    assert not torch.equal(weights["classifier.0.weight"], last["model"]["classifier.0.weight"])
    # best.pt: the better of the two, at the best epoch.
    best = torch.load(ema_run / "best.pt", weights_only=True)
    scores = [(max(r["val_top1"], r["ema_val_top1"]), r["ema_val_top1"] >= r["val_top1"]) for r in rows]
    assert best["best_top1"] == max(score for score, _ in scores) == last["best_top1"]
    assert best["weights"] == last["best_weights"] == ("ema" if scores[best["epoch"] - 1][1] else "model")
    if best["epoch"] == 2:  # the last epoch's weights are last.pt's: best.pt holds one set or the other
        expected = weights if best["weights"] == "ema" else last["model"]
        assert all(torch.equal(best["model"][key], expected[key]) for key in expected)


def test_the_average_resumes_exactly(ema_run: Path, tmp_path: Path) -> None:
    first = one_epoch_with_ema(tmp_path)
    run("train.py", "--resume", str(first), "--epochs", "2", cwd=tmp_path)  # --ema comes back from the checkpoint
    assert rows_of(first) == rows_of(ema_run)
    resumed, straight = (torch.load(d / "last.pt", weights_only=True) for d in (first, ema_run))
    for part in ("model", "ema"):
        assert resumed[part].keys() == straight[part].keys()
        for key in straight[part]:
            assert torch.equal(resumed[part][key], straight[part][key]), (part, key)


def one_epoch_with_ema(work: Path) -> Path:
    run("train.py", *TINY_SHAPES, *EMA, "--epochs", "1", "--name", "first", cwd=work)
    return work / "runs" / "first"


def test_an_average_added_on_resume_starts_from_the_current_weights(one_epoch_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(one_epoch_run, tmp_path, "plain")  # trained without --ema
    result = run("train.py", "--resume", str(run_dir), "--epochs", "2", "--ema", "0.9", cwd=tmp_path)
    assert "note: that run kept no moving average (--ema): it starts now" in result.stdout
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert int(last["ema"]["n_averaged"]) == 4 and "ema_val_top1" in rows_of(run_dir)[-1]
    assert "ema_val_top1" not in rows_of(run_dir)[0]
