"""train.py's side of the paper and of torchvision: the paper recipe, fine-tuning torchvision's
ImageNet weights (a file the test writes, no network), and 10-crop evaluation."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import run
from PIL import Image

from train_settings import command_line_settings, flat_settings

TINY = ["--epochs", "1", "--max-steps", "2", "--batch-size", "4", "--workers", "0", "--amp", "off"]


def test_paper_recipe_sets_the_papers_values_and_explicit_flags_win() -> None:
    settings = flat_settings(command_line_settings(["--recipe", "paper"]))
    chosen = {
        key: settings[key]
        for key in (
            "model",
            "batch_size",
            "lr",
            "momentum",
            "weight_decay",
            "schedule",
            "epochs",
            "augment",
            "lighting",
        )
    }
    assert chosen == {
        "model": "paper",
        "batch_size": 128,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "plateau",
        "epochs": 90,
        "augment": "crop",
        "lighting": 0.1,
    }
    assert command_line_settings(["--recipe", "paper", "--epochs", "3"]).epochs == 3


def test_cifar10_recipe_is_the_measured_command() -> None:
    """--recipe cifar10 is the command docs/performance.md measured (80.5% with flip testing), flag for flag."""
    measured = "--image-size 67 --batch-size 256 --epochs 18 --lr 0.02 --nesterov --schedule onecycle "
    measured += "--warmup-steps 195 --label-smoothing 0.1 --dropout 0.25 --tta flip"
    assert command_line_settings(["--recipe", "cifar10"]) == replace(
        command_line_settings(measured.split()), recipe="cifar10"
    )
    assert command_line_settings(["--recipe", "cifar10", "--ema", "0.999"]).ema == 0.999  # the new options go with it
    assert command_line_settings([]).model == "default"


def write_folder(root: Path) -> Path:
    """Two classes of noisy, tinted 90x70 photos: with texture, so that ten crops see different pixels."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(("ants", "bees")):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 120, (70, 90, 3)) + np.array([120 * label, 30 * i, 60])
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.jpg")
    return root


@pytest.mark.slow
def test_fine_tuning_torchvision_weights_from_the_cache(tmp_path: Path) -> None:
    # torchvision's AlexNet (random weights) where torch.hub keeps the IMAGENET1K_V1 file.
    torch.manual_seed(0)
    weights = torchvision.models.alexnet(weights=None).state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(weights, cache / "alexnet-owt-7be5be79.pth")
    write_folder(tmp_path / "folder")
    command = ["--data", "folder", "--pretrained", "imagenet", *TINY]
    result = run("train.py", *command, "--name", "ft", cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "torch")})
    checkpoint = torch.load(tmp_path / "runs" / "ft" / "best.pt", weights_only=True)
    assert checkpoint["model_config"]["layout"] == "torchvision" and checkpoint["model_config"]["num_classes"] == 2
    assert checkpoint["preprocess"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet's, as the weights expect
    assert checkpoint["model"]["classifier.6.weight"].shape == (2, 4096)
    # The pretrained convolutions were loaded (and moved only by two small steps).
    conv5 = checkpoint["model"]["features.10.weight"]
    assert (conv5 - weights["features.10.weight"]).abs().max() < 0.05 * weights["features.10.weight"].abs().max()
    # Offline with nothing cached: one line saying what to copy where.
    offline = {"TORCH_HOME": str(tmp_path / "empty")}
    offline["https_proxy"] = offline["HTTPS_PROXY"] = "http://127.0.0.1:9"  # no network even where there is one
    result = run("train.py", *command, "--name", "ft2", cwd=tmp_path, env=offline, check=False)
    assert (
        result.returncode == 1
        and "--pretrained imagenet" in result.stderr
        and "alexnet-owt-7be5be79.pth" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_evaluate_with_flips_and_ten_crops(tmp_path: Path) -> None:
    """--tta in training validates every epoch that way; --evaluate with the same --tta repeats it."""
    write_folder(tmp_path / "folder")
    flags = ["--data", "folder", "--image-size", "67", *TINY, "--tta", "flip", "--name", "a", "--no-plots"]
    run("train.py", *flags, cwd=tmp_path)
    reports = {}
    for tta in ("none", "flip", "10crop"):
        result = run(
            "train.py",
            "--data",
            "folder",
            "--evaluate",
            "runs/a/best.pt",
            "--tta",
            tta,
            "--workers",
            "0",
            "--amp",
            "off",
            cwd=tmp_path,
        )
        reports[tta] = json.loads(result.stdout.strip().splitlines()[-1])
    assert reports["10crop"]["tta"] == "10crop" and 0 <= reports["10crop"]["val_top1"] <= 1
    row = json.loads((tmp_path / "runs" / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert reports["flip"]["val_loss"] == pytest.approx(row["val_loss"], rel=1e-6)  # the run's own validation
    assert reports["flip"]["val_top1"] == row["val_top1"]
    assert len({reports[tta]["val_loss"] for tta in reports}) == 3  # three different tests


@pytest.mark.slow
def test_evaluate_takes_the_checkpoints_channels(tmp_path: Path) -> None:
    # A grayscale model evaluated on an RGB folder, without repeating --in-channels.
    write_folder(tmp_path / "folder")
    run(
        "train.py",
        "--data",
        "folder",
        "--image-size",
        "67",
        "--in-channels",
        "1",
        *TINY,
        "--name",
        "gray",
        "--no-plots",
        cwd=tmp_path,
    )
    result = run("train.py", "--data", "folder", "--evaluate", "runs/gray/best.pt", "--workers", "0", cwd=tmp_path)
    row = json.loads((tmp_path / "runs" / "gray" / "metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads(result.stdout.strip().splitlines()[-1])["val_top1"] == row["val_top1"]
