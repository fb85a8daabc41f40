"""Real folders and real mishaps, through the command line: hidden and macOS files, extensionless
JPEGs, reproducible seeds, torn metrics, missing checkpoints, sizes that cannot fit, unwritable
output, unsafe run names, non-finite flags and decode caches that do not fit their folder."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from helpers import copy_run, run
from PIL import Image

import train_settings
from data_pipeline import DataConfig, load_data
from train_settings import command_line_settings

# Image folders: 40x40 images, stored at 40 px and upscaled to 67: a step or two of batch 16 per epoch.
FOLDER = [
    "--image-size",
    "67",
    "--workers",
    "0",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--max-steps",
    "2",
    "--log-interval",
    "1",
]
NUMBER = r"(?<![\d.]){}(?![\d.])"  # a count as a whole number, not the 12 of "12.5%"


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, without its checkpoints afterwards (~670 MB a run), even when the test failed."""
    yield tmp_path
    for path in tmp_path.rglob("*.pt"):
        if path.name in ("last.pt", "best.pt"):
            path.unlink()


def write_folder(
    root: Path,
    classes: tuple[str, ...] = ("a", "b"),
    train: int = 3,
    val: int = 2,
    seed: int = 0,
    suffix: str = ".png",
    image_format: str = "PNG",
) -> Path:
    """An ImageNet-layout folder of random 40x40 RGB images: root/{train,val}/<class>/<i><suffix>."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}{suffix}", format=image_format)
    return root


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error: ` line of a failed run (no traceback), checked."""
    assert result.returncode != 0, f"exit 0, expected an error:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def succeeded(result: subprocess.CompletedProcess, work: Path) -> list[str]:
    """The lines of stdout and stderr of a run that must have succeeded, with `work` (whose name pytest
    makes from the test's, "macos" and all) written WORK."""
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return (result.stdout + "\n" + result.stderr).replace(str(work), "WORK").splitlines()


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def cache_files(data_root: Path) -> list[Path]:
    return sorted((data_root / "cache").glob("*.pt"))


# --- Hidden files, macOS files, files without an extension ----------------------------------------


def load_folder(root: Path, work: Path, **overrides) -> tuple:
    """load_data on an image folder, as train.py calls it -> (train, val, classes)."""
    options = dict(data=str(root), data_root=str(work / "data"), image_size=67, loader="memory", workers=0)
    data = load_data(DataConfig(batch_size=16, **{**options, **overrides}), torch.device("cpu"))
    return data.train, data.val, data.classes


def printed(capsys: pytest.CaptureFixture, work: Path) -> list[str]:
    """What was printed (stdout and stderr), with `work` written WORK (pytest names it after the test: "macos"...)."""
    captured = capsys.readouterr()
    return (captured.out + "\n" + captured.err).replace(str(work), "WORK").splitlines()


def test_hidden_folders_and_files_are_never_classes_or_images(work: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_folder(work / "d")
    # What Jupyter leaves behind: a hidden folder holding a copy of an image, beside the classes and inside one.
    for folder in (root / "train" / ".ipynb_checkpoints", root / "train" / "a" / ".ipynb_checkpoints"):
        folder.mkdir()
        shutil.copy(root / "train" / "a" / "0.png", folder / "0-checkpoint.png")
    # A hidden file with an image extension is not an image either: it may not count as an unreadable one.
    (root / "train" / "a" / ".thumbnail.png").write_bytes(b"editor state, not a PNG")
    train, val, classes = load_folder(root, work, max_bad_files=0)
    assert classes == ["a", "b"] and len(train) == 6 and len(val) == 4
    assert any("skipped 2 hidden" in line for line in printed(capsys, work))


def test_macos_appledouble_files_are_skipped_with_one_summary_line(work: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_folder(work / "d", train=4, val=2)  # 8 + 4 images
    images = sorted(root.rglob("*.png"))
    for image in images:  # copied from a Mac to a USB disk: a ._ file beside every image
        (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    (root / "train" / "._a").write_bytes(b"\x00\x05\x16\x07")  # and beside every folder
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert len(images) == 12
    train, val, classes = load_folder(root, work, max_bad_files=0)  # none of them counts as an unreadable image
    assert classes == ["a", "b"] and len(train) == 8 and len(val) == 4
    lines = printed(capsys, work)
    mentions = re.compile(r"\._|appledouble|mac|hidden", re.IGNORECASE)
    summary = [line for line in lines if mentions.search(line) and re.search(NUMBER.format(12), line)]
    assert len(summary) == 1, lines


def test_jpegs_without_an_extension_are_reported_once_with_a_count(work: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_folder(work / "d")
    rng = np.random.default_rng(1)
    for name in ("train/a/IMG_0001", "train/b/IMG_0002", "val/a/IMG_0003"):  # valid JPEGs, no extension
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name, format="JPEG")
    train, val, _ = load_folder(root, work)
    assert len(train) == 6 and len(val) == 4  # skipped, as the note says
    lines = printed(capsys, work)
    said = [line for line in lines if "extension" in line.lower()]
    assert len(said) == 1, lines  # once for both splits, not once per file
    assert re.search(NUMBER.format(3), said[0]) and "IMG_0001" in said[0], said[0]


# --- The same seed gives the same run ------------------------------------------------------------


def final_state(run_dir: Path) -> tuple[dict, list[dict]]:
    """last.pt's model weights and the metrics without their timings."""
    weights = torch.load(run_dir / "last.pt", weights_only=True, mmap=True)["model"]
    timing = {"epoch_seconds", "images_per_second"}
    rows = [
        {k: v for k, v in row.items() if k not in timing and not k.endswith("_seconds")}
        for row in metrics_rows(run_dir)
    ]
    return weights, rows


@pytest.mark.slow
def test_same_seed_same_run_with_or_without_the_decode_cache_and_any_workers(work: Path) -> None:
    root = write_folder(work / "d", classes=("a", "b", "c", "d"), train=8, val=2)  # 32 images: 2 steps of 16
    common = ["--data", str(root), *FOLDER, "--seed", "3", "--no-plots"]  # weights and metrics are compared
    first = run("train.py", *common, "--data-root", "fresh", "--name", "decoded", cwd=work)
    assert "Decoding" in first.stdout
    cached = run("train.py", *common, "--data-root", "fresh", "--name", "cached", cwd=work)
    assert "Decoding" not in cached.stdout  # read from the cache the first run wrote
    run("train.py", *common, "--data-root", "other", "--workers", "2", "--name", "workers", cwd=work)
    weights, rows = final_state(work / "runs" / "decoded")
    for name in ("cached", "workers"):
        other_weights, other_rows = final_state(work / "runs" / name)
        assert other_rows == rows, name
        assert other_weights.keys() == weights.keys()
        for key in weights:
            assert torch.equal(other_weights[key], weights[key]), f"{name}: {key}"


# --- Resume: torn metrics, a run directory without last.pt ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("after_checkpoint", ["torn line"])  # a complete later row: test_run_log.py
def test_resume_survives_metrics_written_after_the_checkpoint(
    work: Path, one_epoch_run: Path, after_checkpoint: str
) -> None:
    run_dir = copy_run(one_epoch_run, work, "r")  # the built-in shapes, one epoch (conftest)
    saved = metrics_rows(run_dir)
    assert [row["epoch"] for row in saved] == [1]
    with open(run_dir / "metrics.jsonl", "a") as f:
        if after_checkpoint == "torn line":  # the crash cut the line off
            f.write('{"epoch": 2, "train_lo')
        else:  # a complete row for an epoch the checkpoint does not have
            f.write(json.dumps({**saved[0], "epoch": 2, "train_loss": 12345.0}) + "\n")
    result = run("train.py", "--resume", "runs/r", "--epochs", "2", cwd=work, check=False)
    lines = succeeded(result, work)
    rows = metrics_rows(run_dir)  # every line parses
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[0] == saved[0]  # what was saved is kept
    assert rows[1]["train_loss"] != 12345.0
    if after_checkpoint == "torn line":
        note = re.compile(r"ignor|torn|incomplete|truncat|cut off|unfinished|partial|damaged|skip|drop", re.IGNORECASE)
        assert any("metrics.jsonl" in line and note.search(line) for line in lines), lines


@pytest.mark.slow
def test_resume_from_a_run_directory_without_last_pt_says_it_is_missing_and_what_is_there(work: Path) -> None:
    run_dir = work / "runs" / "r"  # a run whose last.pt was deleted by hand
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").write_bytes(b"weights")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    kept = {name: (run_dir / name).read_bytes() for name in ("best.pt", "metrics.jsonl")}
    line = error_line(run("train.py", "--resume", str(run_dir), "--epochs", "2", cwd=work, check=False))
    assert "last.pt" in line and re.search(r"missing|no last\.pt|not found|does not exist|has no|without", line), line
    assert "best.pt" in line or "metrics.jsonl" in line, line  # what is there
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    # A run that died before its first epoch leaves its validation samples only.
    early = work / "runs" / "early"
    (early / "samples").mkdir(parents=True)
    Image.new("RGB", (67, 67), "red").save(early / "samples" / "00_circle.png")
    line = error_line(run("train.py", "--resume", str(early), cwd=work, check=False))
    assert "last.pt" in line and "samples" in line, line


# --- Refused before anything is loaded or written --------------------------------------------------


@pytest.mark.slow
def test_image_size_that_cannot_fit_in_memory_is_refused_fast_with_the_estimate(work: Path) -> None:
    start = time.monotonic()
    result = run("train.py", "--image-size", "5000", "--name", "big", cwd=work, check=False, timeout=120)
    seconds = time.monotonic() - start
    line = error_line(result)
    assert "--image-size" in line, line
    assert len(re.findall(r"\d[\d.,]*\s*[GT]i?B", line)) >= 2, line  # the estimate and the memory available
    assert seconds < 60
    assert not (work / "runs" / "big").exists()


AS_ROOT = os.geteuid() == 0  # root writes into read-only directories: that case needs another user


@pytest.mark.slow
@pytest.mark.parametrize(
    "obstacle",
    [
        "a file",
        pytest.param("a read-only directory", marks=pytest.mark.skipif(AS_ROOT, reason="root writes there anyway")),
    ],
)
def test_unwritable_out_dir_is_refused_before_loading_the_data(work: Path, obstacle: str) -> None:
    root = write_folder(work / "d")
    out_dir = work / "blocked"
    if obstacle == "a file":
        out_dir.write_text("not a directory\n")
    else:
        out_dir.mkdir()
        out_dir.chmod(0o555)
    try:
        before = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else out_dir.read_bytes()
        result = run(
            "train.py",
            "--data",
            str(root),
            *FOLDER,
            "--data-root",
            "data",
            "--out-dir",
            str(out_dir),
            "--name",
            "r",
            cwd=work,
            check=False,
        )
        line = error_line(result)
        assert "--out-dir" in line or str(out_dir) in line, line
        assert not (work / "data").exists()  # checked before loading: nothing was decoded
        after = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else out_dir.read_bytes()
        assert after == before
    finally:
        if out_dir.is_dir():
            out_dir.chmod(0o755)


@pytest.mark.parametrize("name", ["../../x", "a/b", "/tmp/abs", ".."])
def test_run_name_must_be_one_path_component(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:  # refused at parse time: nothing is created anywhere
        command_line_settings(["--name", name])
    assert exit_info.value.code == 2
    assert "--name must be one folder name" in capsys.readouterr().err.strip().splitlines()[-1]
    assert command_line_settings(["--name", "my-run.v2"]).name == "my-run.v2"


FLOAT_FLAGS = sorted(
    next(s for s in action.option_strings if s.startswith("--"))
    for action in train_settings.build_parser()._actions
    if action.type is float
)


def test_float_flags_are_found() -> None:
    assert {"--lr", "--momentum", "--weight-decay", "--dropout"} <= set(FLOAT_FLAGS)


@pytest.mark.parametrize("flag", FLOAT_FLAGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_flags_are_refused_at_parse_time(flag: str, value: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command_line_settings([f"{flag}={value}"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse's error line: the usage above names every flag
    assert flag in last, last


# --- Decode caches ---------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def cache_contents(data_root: Path) -> list[tuple]:
    """(images shape, labels, images digest) of every cache file, loaded safely."""
    contents = []
    for path in cache_files(data_root):
        cache = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = cache["images"], cache["labels"]
        digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
        contents.append((tuple(images.shape), labels.tolist(), digest))
    return sorted(contents)


@pytest.mark.parametrize("damage", ["one image fewer", "label out of range", "another image size", "custom class"])
def test_a_cache_that_does_not_fit_its_folder_is_rebuilt(
    work: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    root = write_folder(work / "d", train=3, val=2)  # 6 training images, 4 validation images, 2 classes
    data_root = work / "data"
    train, val, _ = load_folder(root, work)
    right = cache_contents(data_root)
    assert [shape[0] for shape, _, _ in right] == [4, 6]
    # Damage the training images' cache (the one with 6 labels).
    path = next(p for p in cache_files(data_root) if len(torch.load(p, weights_only=True)["labels"]) == 6)
    cache = torch.load(path, weights_only=True)
    images, labels = cache["images"], cache["labels"]
    marker = work / "pwned"
    if damage == "one image fewer":
        cache["images"] = images[:-1].clone()
    elif damage == "label out of range":
        cache["labels"] = labels.clone()
        cache["labels"][0] = 2  # two classes: 0 and 1
    elif damage == "another image size":
        cache["images"] = TF.resize(images, [32, 32], antialias=True)
    else:  # a pickle that only loads with weights_only=False
        cache = {"images": Payload(marker), "labels": labels, "bad": []}
    torch.save(cache, path)
    capsys.readouterr()
    again, _, _ = load_folder(root, work)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert cache_contents(data_root) == right  # rebuilt
    assert not marker.exists()
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "cache" in warnings[0] and str(path) in warnings[0], warnings  # one plain warning
    assert "weights_only" not in warnings[0]


def digests(paths: list[Path]) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def test_folders_with_the_same_name_keep_their_own_caches(work: Path, capsys: pytest.CaptureFixture) -> None:
    first, second = write_folder(work / "a" / "data", seed=1), write_folder(work / "b" / "data", train=4, seed=2)
    data_root = work / "cache-root"
    load_folder(first, work, data_root=str(data_root))
    first_caches = digests(cache_files(data_root))
    assert first_caches
    load_folder(second, work, data_root=str(data_root))
    both = digests(cache_files(data_root))
    assert len(both) == 2 * len(first_caches), sorted(both)
    assert {name: both.get(name) for name in first_caches} == first_caches  # a/data's caches are not evicted
    capsys.readouterr()
    load_folder(first, work, data_root=str(data_root))
    assert "Decoding" not in capsys.readouterr().out
    assert digests(cache_files(data_root)) == both
