"""train.py and inference.py end to end, as subprocesses, on tiny data written in the real formats."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, copy_run, png_size, run, shared_run
from PIL import Image

TINY = ["--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--log-interval", "1"]

pytestmark = pytest.mark.slow  # every test here runs the scripts as subprocesses


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run of the default (shapes) pipeline, shared by the tests below (trained once for the session):
    the folder whose runs/ holds it alone, as runs/tiny. Read only: test_resume_continues_from_last_epoch copies it."""
    run_dir = shared_run(
        tmp_path_factory,
        "tiny",
        "--train-size",
        "64",
        "--val-size",
        "32",
        "--epochs",
        "2",
        "--max-steps",
        "2",
        "--batch-size",
        "16",
    )
    return run_dir.parent.parent


def test_train_writes_the_run_directory(shapes_run: Path) -> None:
    run_dir = shapes_run / "runs" / "tiny"
    for name in ("last.pt", "best.pt", "metrics.jsonl", "curves.png"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    keys = {
        "epoch",
        "train_loss",
        "train_top1",
        "val_loss",
        "val_top1",
        "val_top5",
        "lr",
        "epoch_seconds",
        "images_per_second",
    }
    assert keys <= rows[0].keys()
    assert all(0 <= row["val_top1"] <= row["val_top5"] <= 1 for row in rows)
    # Where the training time went: waiting for the next batch, and the rest.
    for row in rows:
        assert row["data_seconds"] >= 0 and row["compute_seconds"] > 0
        assert row["data_seconds"] + row["compute_seconds"] <= row["epoch_seconds"]
    with Image.open(run_dir / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert png_size(run_dir / "neighbours.png") == (7 * 160, 5 * 190)  # five queries, six neighbours each
    samples = sorted((run_dir / "samples").glob("*.png"))
    assert len(samples) >= 4
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert checkpoint["classes"][0] == "circle"
    assert checkpoint["preprocess"]["in_channels"] == 3 and checkpoint["preprocess"]["image_size"] == 67
    assert {"optimizer", "schedule", "scaler", "rng", "model_config"} <= checkpoint.keys()


def test_inference_defaults_to_the_latest_run(shapes_run: Path) -> None:
    samples = sorted((shapes_run / "runs" / "tiny" / "samples").glob("*.png"))
    result = run("inference.py", str(samples[0]), str(samples[1]), "--topk", "3", cwd=shapes_run)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{samples[0]}:" and len(lines) == 8
    percents = [float(line.split("%")[0]) for line in lines[1:4]]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.01


def test_inference_json_matches_the_trained_model(shapes_run: Path) -> None:
    """Checkpoint round trip: inference's probabilities equal the saved model's on the same image."""
    from checkpoints import load_checkpoint
    from image_files import load_image
    from presets import eval_transform

    run_dir = shapes_run / "runs" / "tiny"
    sample = sorted((run_dir / "samples").glob("*.png"))[0]
    result = run(
        "inference.py", str(sample), "--json", "--topk", "10", "--checkpoint", str(run_dir / "best.pt"), cwd=shapes_run
    )
    predictions = json.loads(result.stdout)["predictions"]
    model, meta = load_checkpoint(run_dir / "best.pt")
    with torch.no_grad():
        probabilities = model(eval_transform(load_image(sample, 3), meta["preprocess"])[None]).softmax(1)[0]
    for prediction in predictions:
        index = meta["classes"].index(prediction["class"])
        assert prediction["probability"] == pytest.approx(probabilities[index].item(), abs=1e-5)


def test_inference_reports_bad_files_and_classifies_the_rest(shapes_run: Path, tmp_path: Path) -> None:
    good = sorted((shapes_run / "runs" / "tiny" / "samples").glob("*.png"))[0]
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (100, 100), "red").save(tmp_path / "full.jpg", quality=95)
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    missing = tmp_path / "missing.jpg"
    result = run("inference.py", str(not_image), str(good), str(truncated), str(missing), cwd=shapes_run, check=False)
    assert result.returncode == 1
    assert f"{good}:" in result.stdout
    errors = result.stderr.splitlines()
    assert any(str(not_image) in line and "not an image" in line for line in errors)
    assert any(str(truncated) in line for line in errors)
    assert any(str(missing) in line and "no such file" in line for line in errors)
    assert "Traceback" not in result.stderr


def test_inference_labels_file_overrides_class_names(shapes_run: Path, tmp_path: Path) -> None:
    sample = sorted((shapes_run / "runs" / "tiny" / "samples").glob("*.png"))[0]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing{i}\n" for i in range(10)))
    result = run("inference.py", str(sample), "--labels", str(labels), "--json", cwd=shapes_run)
    assert all(p["class"].startswith("thing") for p in json.loads(result.stdout)["predictions"])
    labels.write_text("only\ntwo\n")
    result = run("inference.py", str(sample), "--labels", str(labels), cwd=shapes_run, check=False)
    assert result.returncode == 2 and "2 names but the model has 10 classes" in result.stderr


def test_inference_without_any_run_says_what_to_do(tmp_path: Path) -> None:
    Image.new("RGB", (80, 80)).save(tmp_path / "x.png")
    result = run("inference.py", "x.png", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "python train.py" in result.stderr


def test_resume_continues_from_last_epoch(shapes_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(shapes_run / "runs" / "tiny", tmp_path)
    run(
        "train.py",
        "--train-size",
        "64",
        "--val-size",
        "32",
        "--epochs",
        "3",
        "--max-steps",
        "2",
        "--batch-size",
        "16",
        "--resume",
        str(run_dir),
        cwd=tmp_path,
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 3


def test_existing_run_name_is_not_overwritten(shapes_run: Path) -> None:
    before = (shapes_run / "runs" / "tiny" / "last.pt").read_bytes()
    result = run(
        "train.py", "--train-size", "64", "--val-size", "32", *TINY, "--name", "tiny", cwd=shapes_run, check=False
    )
    assert result.returncode != 0 and "already exists" in result.stderr
    assert (shapes_run / "runs" / "tiny" / "last.pt").read_bytes() == before


def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0, 0, dtype 0x08, ndim), big-endian sizes, raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_train_on_mnist_format_files(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    run("train.py", "--dataset", "mnist", *TINY, "--name", "m", cwd=tmp_path)
    checkpoint = torch.load(tmp_path / "runs" / "m" / "best.pt", weights_only=True)
    assert checkpoint["preprocess"]["in_channels"] == 1 and checkpoint["model_config"]["in_channels"] == 1
    assert checkpoint["classes"][3].startswith("3")
    # A grayscale model classifies colour photos: inference converts them to one channel.
    Image.new("RGB", (120, 90), (200, 30, 30)).save(tmp_path / "colour.jpg")
    result = run("inference.py", "colour.jpg", "--topk", "2", cwd=tmp_path)
    assert len(result.stdout.splitlines()) == 3


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_missing_torchvision_dataset_is_a_clear_error(tmp_path: Path, dataset: str) -> None:
    result = run("train.py", "--dataset", dataset, *TINY, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"--dataset {dataset}: not found in data" in result.stderr and "--download" in result.stderr


def make_image_folder(root: Path) -> None:
    """DIR/{train,val}/<class>/ with mixed modes, sizes and formats, as real folders have."""
    modes = [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("CMYK", ".jpg"), ("I;16", ".png")]
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 3)):
        for label, name in enumerate(("ants", "bees")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                mode, ext = modes[(i + label) % len(modes)]
                size = (int(rng.integers(40, 300)), int(rng.integers(40, 300)))
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if mode == "I;16":
                    image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 256)
                elif mode == "P":
                    image = image.convert("P")
                else:
                    image = image.convert(mode)
                image.save(folder / f"{i}{ext}")


def test_train_on_an_image_folder_with_mixed_images(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "folder")
    run("train.py", "--data", "folder", "--image-size", "67", *TINY, "--workers", "0", "--name", "f", cwd=tmp_path)
    checkpoint = torch.load(tmp_path / "runs" / "f" / "best.pt", weights_only=True)
    assert checkpoint["classes"] == ["ants", "bees"]
    assert checkpoint["preprocess"]["resize_size"] == round(67 * 256 / 224)
    result = run("inference.py", "folder/val", "--json", cwd=tmp_path)
    assert len(result.stdout.splitlines()) == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--epochs", "-1"], "--epochs must be at least 1"),
        (["--lr", "0"], "--lr must be positive"),
        (["--image-size", "32"], "--image-size must be at least 67"),
        (["--dataset", "imagenet21k"], "invalid choice"),
        pytest.param(
            ["--device", "cuda"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there"),
        ),
        (["--data", "nowhere"], "--data nowhere: expected an image folder"),
    ],
)
def test_bad_flags_are_argparse_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("train.py", *args, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_image_folder_without_val_split(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "folder")
    for path in sorted((tmp_path / "folder" / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "folder" / "val").rmdir()
    result = run("train.py", "--data", "folder", *TINY, cwd=tmp_path, check=False)
    assert result.returncode != 0 and "no val/ folder" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(
    not (SHARED_DATA / "hymenoptera" / "train").is_dir(), reason="../shared/data is not beside the checkout"
)
def test_train_on_real_jpegs(tmp_path: Path) -> None:
    run(
        "train.py",
        "--data",
        str(SHARED_DATA / "hymenoptera"),
        "--image-size",
        "67",
        *TINY,
        "--workers",
        "0",
        "--name",
        "h",
        cwd=tmp_path,
    )
    assert (tmp_path / "runs" / "h" / "best.pt").is_file()
