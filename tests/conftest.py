"""Shared test setup: the repository root on sys.path, small thread counts, deterministic seeds."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alexnet import AlexNet  # noqa: E402  (after the path is set)
from checkpoints import load_checkpoint  # noqa: E402
from presets import EvalPreset  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


# With pytest-xdist (`pytest -n 2`), the cores are shared between the workers: one thread each, for
# the tests and for the scripts they start, since idle OpenMP threads waiting on a busy core stall.
THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
torch.set_num_threads(int(THREADS))
# The environment of the scripts under test: no inherited torchrun variables.
SCRIPT_ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": THREADS, "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}


def run(script: str, *args: str, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the repository's scripts in a subprocess, as a user would."""
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, f"{script} {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, checked to be one that decodes whole."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # the whole file decodes, not just its header
        return image.size


def gpus() -> list:
    """The accelerators, as pytest params skipped where absent (as torchvision's tests do): the same
    `pytest` on a GPU machine runs them there. Marked `gpu`, so that `pytest -m gpu` runs just these."""
    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    return [
        pytest.param(name, marks=[pytest.mark.gpu, pytest.mark.skipif(not there, reason=f"no {name.upper()} here")])
        for name, there in present.items()
    ]


def devices() -> list:
    """The CPU and every accelerator (see gpus)."""
    return ["cpu", *gpus()]


def save_checkpoint_file(path: Path, model: torch.nn.Module, classes: list[str], preprocess: dict) -> Path:
    """A train.py-style checkpoint with what inference needs: weights, model_config, classes, preprocess."""
    checkpoint = {
        "model": model.state_dict(),
        "model_config": model.config,
        "classes": classes,
        "preprocess": preprocess,
    }
    torch.save(checkpoint, path)
    return path


# A tiny model's checkpoint, shared by the inference and export tests. resize_size - image_size is
# even, so that the centre crop sits exactly in the middle.
CHECKPOINT_CLASSES = ["a", "b", "c"]
CHECKPOINT_PRESET = EvalPreset(image_size=67, resize_size=77, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.3], in_channels=3)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A train.py-style checkpoint of a 3-class AlexNet (the keys inference needs)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "best.pt"
    model = AlexNet(num_classes=len(CHECKPOINT_CLASSES))
    yield save_checkpoint_file(path, model, CHECKPOINT_CLASSES, asdict(CHECKPOINT_PRESET))
    shutil.rmtree(path.parent)


@pytest.fixture(scope="module")
def loaded(checkpoint_file: Path) -> tuple[AlexNet, dict]:
    return load_checkpoint(checkpoint_file)


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """inference.main(args) in this process: exit status, stdout, stderr."""
    import inference

    try:
        inference.main(list(args))
        status = 0
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err
