"""torchrun --nproc_per_node=2 with gloo on the CPU: one run directory, exact validation, the same
step as one process with the same global batch, resumption on another world size, no hangs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, SCRIPT_ENV, run

SHAPES = ["--train-size", "64", "--val-size", "30", "--log-interval", "1", "--device", "cpu", "--amp", "off"]

pytestmark = pytest.mark.slow  # every test here runs the scripts as subprocesses


def torchrun(*args: str, cwd: Path, nproc: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(ROOT / "train.py"),
        *args,
    ]
    env = {**SCRIPT_ENV, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"torchrun {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_two_processes_write_one_run_with_exact_validation_and_resume_in_one(tmp_path: Path) -> None:
    # 30 validation images: 15 per process in batches of 8 (8 + 7): nothing dropped or counted twice.
    common = [*SHAPES, "--epochs", "2", "--batch-size", "8", "--max-steps", "3", "--ema", "0.5"]
    result = torchrun(*common, "--name", "ddp", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]
    run_dir = tmp_path / "runs" / "ddp"
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]
    assert result.stdout.count("Epoch 2/2  train loss") == 1  # rank 0 alone prints
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    # The checkpoint holds the plain model's weights (no DDP "module." prefix) and evaluates alone,
    # over the whole validation set, to the same figures the 2-process run reported.
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["model"]) and checkpoint["world_size"] == 2
    # The weights' moving average: the same on every process (their weights are), saved by rank 0.
    assert int(checkpoint["ema"]["n_averaged"]) == 6 and all("ema_val_top1" in row for row in rows)
    single = run("train.py", *SHAPES, "--evaluate", str(run_dir / "last.pt"), "--batch-size", "8", cwd=tmp_path)
    report = json.loads(single.stdout.strip().splitlines()[-1])
    assert (report["val_top1"], report["val_top5"]) == (rows[-1]["val_top1"], rows[-1]["val_top5"])
    assert report["val_loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-5)
    # Resumed in one process: the run goes on, with a note about the new global batch.
    resume = ["--resume", str(run_dir), "--epochs", "3", "--batch-size", "16", "--no-plots"]  # (drawn under DDP above)
    result = run("train.py", *resume, cwd=tmp_path)
    assert "that run had 2 process(es) of batch 8" in result.stdout and "the global batch is now 16" in result.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert (
        int(torch.load(run_dir / "last.pt", weights_only=True)["ema"]["n_averaged"]) == 6 + 3
    )  # --max-steps 3 resumed


def test_one_step_on_two_processes_equals_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    # No dropout, no warm-up (a full-size step), the same seed: only the split of the batch differs.
    common = [*SHAPES, "--epochs", "1", "--max-steps", "1", "--dropout", "0", "--warmup-steps", "0", "--lr", "0.05"]
    common += ["--no-plots"]  # the weights are what is compared
    torchrun(*common, "--batch-size", "8", "--name", "two", cwd=tmp_path)
    run("train.py", *common, "--batch-size", "16", "--name", "one", cwd=tmp_path)
    two = torch.load(tmp_path / "runs" / "two" / "last.pt", weights_only=True)["model"]
    one = torch.load(tmp_path / "runs" / "one" / "last.pt", weights_only=True)["model"]
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-7)


def test_a_dead_process_ends_the_whole_job(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "train.py"),
        *SHAPES,
        "--train-size",
        "400",  # 25 steps an epoch on each process, 5 epochs: still training when one is killed at step 2
        "--batch-size",
        "8",
        "--epochs",
        "5",
        "--name",
        "dies",
        "--no-plots",
    ]
    env = {**SCRIPT_ENV, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in launcher.stdout:
        if "step 2/" in line:
            break
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert workers
    os.kill(int(workers[-1]), signal.SIGKILL)  # one worker dies mid-training
    start = time.monotonic()
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and time.monotonic() - start < 120
