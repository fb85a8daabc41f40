"""Training survives: exact resumption, Ctrl-C / SIGTERM, non-finite losses, mismatched or unsafe
checkpoints, and bad image folders (issue: reliability and safety)."""

import json
import multiprocessing
import pickle
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
import torch
from helpers import ROOT, SCRIPT_ENV, TINY_SHAPES, copy_run, run, shared_run
from PIL import Image

import atomic_files
import checkpoints
import folders
import run_files
from atomic_files import save_atomically
from data_pipeline import DataConfig, load_data
from errors import CheckpointError, DataError
from presets import train_transform
from train_settings import command_line_settings

# 64 images, batches of 16: 4 steps an epoch, every step logged (those of conftest's one_epoch_run).
SHAPES = TINY_SHAPES
TIMING = ("_seconds", "images_per_second")  # epoch_seconds, data_seconds, compute_seconds, throughput


def final_state(run_dir: Path) -> tuple[dict, list[dict]]:
    """The weights of last.pt and the metrics without their timings."""
    weights = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return weights, [{k: v for k, v in row.items() if not k.endswith(TIMING)} for row in rows]


def assert_same_training(a: Path, b: Path) -> None:
    weights_a, metrics_a = final_state(a)
    weights_b, metrics_b = final_state(b)
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three epochs in one go: the reference for every resumed run below (trained once for the session)."""
    return shared_run(tmp_path_factory, "straight", *SHAPES, "--epochs", "3")


@pytest.mark.slow
def test_resume_after_an_epoch_is_bit_identical(straight_run: Path, one_epoch_run: Path, tmp_path: Path) -> None:
    copy_run(one_epoch_run, tmp_path, "split")  # `train.py *SHAPES --epochs 1`
    run("train.py", "--resume", "runs/split", "--epochs", "3", cwd=tmp_path)  # the run's own settings, and 3 epochs
    assert_same_training(straight_run, tmp_path / "runs" / "split")
    assert not list((tmp_path / "runs" / "split").glob("*.png"))  # its --no-plots too


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_that_resumes_exactly(
    straight_run: Path, tmp_path: Path, signum: int, code: int
) -> None:
    command = [sys.executable, str(ROOT / "train.py"), *SHAPES, "--epochs", "3", "--name", "stopped"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=SCRIPT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in process.stdout:  # wait until training is under way: the second step of epoch 2
        if line.startswith("Epoch 2/3") and "lr" in line:
            break
    for line in process.stdout:
        if "step 2/4" in line:
            process.send_signal(signum)
            break
    output, errors = process.communicate(timeout=120)
    assert process.returncode == code, errors
    assert (
        f"{signal.Signals(signum).name}: stopped at epoch 2" in output
        and "Resume with: python train.py --resume runs/stopped" in output
    )
    checkpoint = torch.load(tmp_path / "runs" / "stopped" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["partial"]["batch"] >= 2  # mid-epoch 2
    if signum == signal.SIGTERM:  # (the same code path for both: resume one of them, to save time)
        run("train.py", "--resume", "runs/stopped", cwd=tmp_path)
        assert_same_training(straight_run, tmp_path / "runs" / "stopped")


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(one_epoch_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(one_epoch_run, tmp_path, "nan")  # `train.py *SHAPES --epochs 1`
    best, last = (run_dir / "best.pt").read_bytes(), (run_dir / "last.pt").read_bytes()
    # Resume at a learning rate of 1e9 (flags given again win): the next steps blow up.
    result = run("train.py", "--resume", str(run_dir), "--epochs", "2", "--lr", "1e9", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        "the training loss became nan at epoch 2, step" in result.stderr
        or "the training loss became inf at epoch 2" in result.stderr
    )
    assert f"the last good checkpoint is {Path('runs/nan/last.pt')}" in result.stderr.replace(str(tmp_path) + "/", "")
    assert (run_dir / "best.pt").read_bytes() == best and (run_dir / "last.pt").read_bytes() == last


@pytest.mark.slow
def test_a_loss_past_the_divergence_limit_stops_unless_the_limit_is_off(one_epoch_run: Path, tmp_path: Path) -> None:
    """A loss far above chance stops the run as a non-finite one does; --divergence-limit 0 lets it go on. Here a
    limit of half of chance trips at once: the tiny run's loss is still near chance in its second epoch."""
    run_dir = copy_run(one_epoch_run, tmp_path, "boom")  # `train.py *SHAPES --epochs 1`
    best, last = (run_dir / "best.pt").read_bytes(), (run_dir / "last.pt").read_bytes()
    limit = ["--divergence-limit", "0.5", "--log-interval", "1"]  # checked at every step (at each log line)
    result = run("train.py", "--resume", "runs/boom", "--epochs", "2", *limit, cwd=tmp_path, check=False)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    line = result.stderr.strip().replace(str(tmp_path) + "/", "")
    assert line.startswith("error: the training loss reached ") and "over --divergence-limit 0.5 times chance," in line
    last_path = Path("runs/boom/last.pt")
    assert f"at epoch 2, step 1; the last good checkpoint is {last_path} (not overwritten); lower --lr" in line
    assert line.endswith("or --divergence-limit 0 to go on")
    assert (run_dir / "best.pt").read_bytes() == best and (run_dir / "last.pt").read_bytes() == last
    run("train.py", "--resume", "runs/boom", "--epochs", "2", "--divergence-limit", "0", cwd=tmp_path)
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_resume_with_another_model_says_what_differs(one_epoch_run: Path, tmp_path: Path) -> None:
    copy_run(one_epoch_run, tmp_path, "a")  # `train.py *SHAPES --epochs 1`: the default model, 3 channels
    result = run("train.py", "--resume", "runs/a", "--epochs", "2", "--model", "paper", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the checkpoint's model differs" in result.stderr and "lrn False there, True here" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run("train.py", "--resume", "runs/a", "--epochs", "2", "--in-channels", "1", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "in_channels 3 there, 1 here" in result.stderr


@pytest.mark.slow
def test_resuming_a_finished_run_says_how_to_go_on_and_writes_nothing(one_epoch_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(one_epoch_run, tmp_path, "done")  # `train.py *SHAPES --epochs 1`: finished
    before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    result = run("train.py", "--resume", str(run_dir), cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: --resume {run_dir / 'last.pt'}: that run has finished its 1 epoch(s); to train on, add --epochs 2 "
        f"or more (--evaluate {run_dir / 'best.pt'} only evaluates it)"
    ]
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == before


@pytest.mark.slow
def test_resume_and_evaluate_refuse_data_of_other_classes_even_of_the_same_count(tmp_path: Path) -> None:
    write_folder(tmp_path / "ab", ("a", "b"), per_class=4)
    write_folder(tmp_path / "xy", ("a", "y"), per_class=4)
    tiny = ["--image-size", "67", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--amp", "off"]
    run("train.py", "--data", "ab", *tiny, "--name", "ab", cwd=tmp_path)
    last = tmp_path / "runs" / "ab" / "last.pt"
    before = last.read_bytes()
    result = run("train.py", "--resume", "runs/ab", "--data", "xy", "--epochs", "2", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    differ = "the checkpoint's classes are not this data's ('b' there, 'y' here)"
    hint = "resume with the same data and model flags, or start a new run"
    assert result.stderr.strip().splitlines()[-1] == f"error: --resume {Path('runs/ab/last.pt')}: {differ}; {hint}"
    assert last.read_bytes() == before
    evaluate = ["--data", "xy", "--evaluate", "runs/ab/best.pt", "--workers", "0"]
    result = run("train.py", *evaluate, cwd=tmp_path, check=False)
    assert result.returncode == 1 and f"{differ}; evaluate it on the data it was trained on" in result.stderr


@pytest.mark.slow
def test_resume_under_another_global_batch_is_refused_where_it_would_mislead(
    one_epoch_run: Path, tmp_path: Path
) -> None:
    # A one-cycle schedule counts steps, so another batch size would end it early or late.
    run("train.py", *SHAPES, "--epochs", "1", "--schedule", "onecycle", "--name", "a", cwd=tmp_path)
    last = (tmp_path / "runs" / "a" / "last.pt").read_bytes()
    result = run("train.py", "--resume", "runs/a", "--epochs", "2", "--batch-size", "8", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "needs its global batch of 16" in result.stderr and "not 8" in result.stderr
    assert (tmp_path / "runs" / "a" / "last.pt").read_bytes() == last
    # The step schedule has no such count: it goes on, with a note.
    copy_run(one_epoch_run, tmp_path, "b")  # `train.py *SHAPES --epochs 1`
    result = run(
        "train.py", "--resume", "runs/b", "--epochs", "2", "--batch-size", "8", "--max-steps", "1", cwd=tmp_path
    )
    assert "the global batch is now 8" in result.stdout


class Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "runs" / "evil"
    bad.mkdir(parents=True)
    torch.save({"model": Payload(marker)}, bad / "last.pt", pickle_protocol=pickle.DEFAULT_PROTOCOL)
    for flag in ("--resume", "--evaluate"):
        result = run("train.py", flag, str(bad / "last.pt"), cwd=tmp_path, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "unsafe" in result.stderr and str(bad / "last.pt") in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_resume_and_evaluate_refuse_weights_that_do_not_fit_in_one_line(tmp_path: Path) -> None:
    # The model train.py builds by default, but a first layer for 1-channel images in the weights.
    from alexnet import AlexNet

    model = AlexNet(num_classes=10)
    weights = model.state_dict()
    weights["features.0.weight"] = weights["features.0.weight"][:, :1].clone()
    preprocess = {"image_size": 67, "resize_size": 67, "mean": [0.5] * 3, "std": [0.25] * 3, "in_channels": 3}
    path = tmp_path / "runs" / "odd" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(
        {
            "model": weights,
            "model_config": model.config,
            "classes": [str(i) for i in range(10)],
            "preprocess": preprocess,
            "args": {},
            "optimizer": {},
            "epoch": 1,
        },
        path,
    )
    for flag in ("--resume", "--evaluate"):
        result = run("train.py", flag, str(path), cwd=tmp_path, check=False)
        assert (
            result.returncode == 1 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        ), result.stderr
        assert result.stderr.startswith(f"error: {flag} {path}: weights do not match")
        assert "features.0.weight has shape (96, 1, 11, 11) in the file but (96, 3, 11, 11)" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "-4"], "--batch-size must be at least 1"),
        (["--lr", "-0.1"], "--lr must be positive"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--image-size", "66"], "--image-size must be at least 67"),
        (["--model", "torchvision", "--image-size", "62"], "--image-size must be at least 63"),
        pytest.param(
            ["--device", "cuda:0"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there"),
        ),
        (["--dataset", "svhn"], "invalid choice: 'svhn'"),
        (["--weight-decay", "-1"], "--weight-decay cannot be negative"),
        (["--divergence-limit", "-1"], "--divergence-limit cannot be negative"),
        (["--tta", "5crop"], "invalid choice: '5crop'"),
        (["--ema", "1.5"], "--ema must be in (0, 1)"),
        (["--ema", "0.99", "--ema-every", "0"], "--ema-every must be at least 1"),
    ],
)
def test_bad_flags_exit_2_with_one_message(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command_line_settings(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --- Bad image folders (through data_pipeline.load_data: no training needed) ----------------------


def write_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 3) -> Path:
    for split in ("train", "val"):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 40), (100 * label, 50 * i, 30)).save(root / split / name / f"{i}.png")
    return root


def load(root: Path, tmp_path: Path, rank: int = 0, world_size: int = 1, **overrides) -> tuple:
    """load_data on an image folder -> (train, val, classes, preprocess, augment)."""
    options = dict(data=str(root), data_root=str(tmp_path / "data"), image_size=67, loader="memory", workers=0)
    data = load_data(DataConfig(batch_size=2, **{**options, **overrides}), torch.device("cpu"), rank, world_size)
    return data.train, data.val, data.classes, data.preprocess, data.augment


def test_unreadable_files_are_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_folder(tmp_path / "f")
    (root / "train" / "a" / "empty.jpg").write_bytes(b"")
    (root / "train" / "a" / "notes.png").write_text("not an image")
    good = (root / "train" / "b" / "0.png").read_bytes()
    (root / "train" / "b" / "cut.png").write_bytes(good[: len(good) // 2])
    train, val, classes, *_ = load(root, tmp_path)
    assert len(train) == 6 and len(val) == 6 and classes == ["a", "b"]
    warning = capsys.readouterr().err
    assert "skipped 3 unreadable image file(s)" in warning and "empty.jpg" in warning and "cut.png" in warning
    with pytest.raises(DataError, match=r"3 image files cannot be read \(more than the 2 allowed\)") as caught:
        load(root, tmp_path, max_bad_files=2)
    assert caught.value.setting == "max_bad_files"


def test_a_broken_link_is_counted_and_named_like_an_unreadable_file(tmp_path: Path, capsys) -> None:
    root = write_folder(tmp_path / "f")
    (root / "train" / "a" / "gone.png").symlink_to(tmp_path / "moved-away.png")
    train, *_ = load(root, tmp_path)
    assert len(train) == 6
    assert "skipped 1 unreadable image file(s)" in (warning := capsys.readouterr().err) and "gone.png" in warning
    with pytest.raises(DataError, match=r"1 image files cannot be read \(more than the 0 allowed\), e\.g\. .*gone"):
        load(root, tmp_path, max_bad_files=0)


def test_a_folder_named_like_an_image_is_read_as_a_folder_and_named(tmp_path: Path, capsys) -> None:
    root = write_folder(tmp_path / "f")
    odd = root / "train" / "a" / "x.jpg"
    odd.mkdir()  # say, an archive unpacked under the name of the file it should have been
    (root / "train" / "a" / "0.png").rename(odd / "0.png")
    train, *_ = load(root, tmp_path)
    assert len(train) == 6  # its image is still one of class a's
    note = capsys.readouterr().out
    assert f"note: 1 folder(s) named like an image file, e.g. {odd}/: the images inside are read" in note
    assert "rename the folder if it should have been a file" in note


def test_class_names_match_across_unicode_forms(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert decomposed != composed
    root = write_folder(tmp_path / "f", classes=("a", decomposed))
    (root / "val" / decomposed).rename(root / "val" / composed)  # val/ written on another system
    train, val, classes, *_ = load(root, tmp_path)
    assert classes == ["a", decomposed] and len(val) == 6 and sorted(set(val.labels.tolist())) == [0, 1]
    assert "match those of train/ only in another Unicode form" in capsys.readouterr().out
    (root / "train" / composed).mkdir()  # both forms in train/: which one is meant?
    with pytest.raises(DataError, match=r"two class folders named café that differ only in their Unicode form"):
        load(root, tmp_path)


def test_a_checkpoints_classes_match_the_data_across_unicode_forms() -> None:
    """--resume and --evaluate compare the checkpoint's class names with the data's as folders.py compares
    val/ with train/: in NFC. The same names in another form pass unless they sort into another order."""
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    checkpoints.check_same_classes({"classes": ["a", decomposed]}, ["a", composed], Path("best.pt"))  # no error
    saved, here = sorted([decomposed, "caff"]), sorted([composed, "caff"])
    assert saved == [decomposed, "caff"] and here == ["caff", composed]  # e < f, but é > f
    with pytest.raises(CheckpointError) as caught:
        checkpoints.check_same_classes({"classes": saved}, here, Path("best.pt"))
    assert str(caught.value) == (
        "best.pt: the checkpoint's classes are this data's written in another Unicode form (NFC or NFD), which "
        "sorts them in another order, so the labels would not match; rename this data's class folders as the "
        "checkpoint writes them"
    )
    with pytest.raises(CheckpointError, match=r"classes are not this data's \('a' there, 'b' here\)"):
        checkpoints.check_same_classes({"classes": ["a", composed]}, ["b", composed], Path("best.pt"))


def test_a_class_folder_that_cannot_be_read_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_folder(tmp_path / "f")
    locked = root / "train" / "b"
    real_access = folders.os.access
    # (as root every folder is readable: the operating system's answer is stood in for)
    monkeypatch.setattr(folders.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    with pytest.raises(DataError, match=r"train/b: cannot be read \(permission denied\); fix its permissions"):
        load(root, tmp_path)
    locked = root / "val"  # the split's own folder: the same line, not a traceback from listing it
    with pytest.raises(DataError, match=r"f/val: cannot be read \(permission denied\); fix its permissions"):
        load(root, tmp_path)
    (root / "train" / "a" / "more").mkdir()  # a folder inside a class: rglob alone skips it without a word
    (root / "train" / "a" / "0.png").rename(root / "train" / "a" / "more" / "0.png")
    locked = root / "train" / "a" / "more"
    with pytest.raises(DataError, match=r"train/a/more: cannot be read \(permission denied\); fix its permissions"):
        load(root, tmp_path)


def test_streaming_skips_unreadable_files(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f")
    (root / "val" / "a" / "bad.jpg").write_text("no")
    _, val, *_ = load(root, tmp_path, loader="stream")
    assert sum(len(labels) for _, labels in val.batches()) == 6  # 7 files, one unreadable, no crash


def test_streamed_training_fills_unreadable_files_and_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Under torchrun each process must take the same number of steps: a batch may not shrink or vanish.
    root = write_folder(tmp_path / "f", per_class=4)
    for name in ("a/1.png", "a/2.png", "b/3.png"):
        (root / "train" / name).write_text("not an image")
    sizes = []
    for rank in (0, 1):
        train, *_ = load(root, tmp_path, loader="stream", rank=rank, world_size=2)
        batches = list(train.batches(seed=rank))
        sizes.append([len(labels) for _, labels in batches])
        images, labels = torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches])
        assert torch.equal(
            images[:, 0, 0, 0].long(), 100 * labels
        )  # a file filling in brings its own label (red 0 or 100)
    assert sizes == [[2, 2], [2, 2]]  # 8 files, global batch 4: two full batches on each process
    assert "skipping" in capsys.readouterr().err
    # The same limit as for folders decoded into memory, found as the files are read.
    train, *_ = load(root, tmp_path, loader="stream", max_bad_files=2)
    with pytest.raises(DataError, match=r"3 image files cannot be read \(more than the 2 allowed\), e\.g\. .*\.png"):
        for _ in range(3):  # (each epoch reads the files in another order; all of them once an epoch)
            list(train.batches(seed=_))


def test_a_channel_that_never_varies_is_normalised_without_dividing_by_zero(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f")  # blue is 30 in every image
    for loader in ("memory", "stream"):
        train, _, _, preprocess, spec = load(root, tmp_path, loader=loader)
        assert preprocess.std[2] == pytest.approx(1 / 255) and preprocess.std[0] > 0.1
        images, _ = next(train.batches())
        x = train_transform(images, spec, torch.Generator().manual_seed(0))
        assert torch.isfinite(x).all()


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f")
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"train/empty has no images"):
        load(root, tmp_path)


def test_class_only_in_val_is_an_error_and_only_in_train_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_folder(tmp_path / "f")
    (root / "val" / "c").mkdir()
    with pytest.raises(DataError, match=r"val/c is a class that .*train does not have"):
        load(root, tmp_path)
    (root / "val" / "c").rmdir()
    for path in (root / "val" / "b").iterdir():
        path.unlink()
    load(root, tmp_path)
    assert "val has no images of class b" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split_is_named(tmp_path: Path, split: str) -> None:
    root = write_folder(tmp_path / "f")
    for path in sorted((root / split).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / split).rmdir()
    with pytest.raises(DataError, match=f"no {split}/ folder"):
        load(root, tmp_path)


# --- Atomic checkpoints ------------------------------------------------------------------------


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_atomically({"epoch": 1, "weights": torch.ones(3)}, path)
    before = path.read_bytes()

    def disk_full(obj, f) -> None:  # half the bytes reach the disk, then the disk is full
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(atomic_files.DiskFullError, match=r"last\.pt: no space left on the disk \(") as caught:
        save_atomically({"epoch": 2, "weights": torch.zeros(3)}, path)
    assert isinstance(caught.value, OSError) and caught.value.errno == 28  # still an OSError for those who catch one
    assert path.read_bytes() == before and torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_unnamed_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    first, second = (run_files.make_run_dir(tmp_path / "runs" / "shapes-20261202-101500", named=False) for _ in "ab")
    assert (first.name, second.name) == ("shapes-20261202-101500", "shapes-20261202-101500-2")
    assert first.is_dir() and second.is_dir()
    with pytest.raises(SystemExit, match=r"already exists; choose another --name or --resume"):
        run_files.make_run_dir(tmp_path / "runs" / "shapes-20261202-101500", named=True)  # a --name is never renamed


def test_two_processes_writing_one_file_use_their_own_temporary_files(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "cache.pt"
    seen = []

    def write(f) -> None:
        seen.append(Path(f.name).name)
        f.write(b"x")

    for pid in (101, 202):  # two processes, as os.getpid tells them apart
        monkeypatch.setattr("atomic_files.os.getpid", lambda pid=pid: pid)
        atomic_files.write_atomically(target, write)
    assert seen == ["cache.pt.101.tmp", "cache.pt.202.tmp"] and target.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.pt"]


def write_many_times(target: Path, letter: bytes, start: "multiprocessing.synchronize.Event") -> None:
    """Write `target` 50 times, each time 64 KB of `letter` in 16 pieces, slowly enough to overlap another writer."""

    def write(f) -> None:
        for _ in range(16):
            f.write(letter * 4096)
            time.sleep(0.0002)

    start.wait()
    for _ in range(50):
        atomic_files.write_atomically(target, write)


def test_two_processes_writing_one_file_at_once_never_trip_over_each_other(tmp_path: Path) -> None:
    """Two runs caching the same folder write the same file at the same moment: with one temporary name
    between them, one renames the other's half-written file away and fails, or leaves a mixed file."""
    target, fork = tmp_path / "cache.pt", multiprocessing.get_context("fork")
    start = fork.Event()
    writers = [fork.Process(target=write_many_times, args=(target, letter, start)) for letter in (b"A", b"B")]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    assert target.read_bytes() in (b"A" * 65536, b"B" * 65536)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.pt"]


def test_train_refuses_a_folder_of_one_class_in_one_line(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", classes=("solo",))
    result = run("train.py", "--data", "f", "--image-size", "67", "--workers", "0", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --data f: {Path('f/train')} has one class folder (solo); a classifier needs two or more: "
        "add a folder of images of another class"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_an_unnamed_run_whose_name_is_taken_in_that_second_gets_the_next_one(tmp_path: Path) -> None:
    """Another run started in the same second holds runs/shapes-<date>-<time>/ (made here for every second
    of the next two minutes): this one takes -2 rather than refusing a --name nobody gave."""
    now = time.time()
    taken = {f"shapes-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + s))}" for s in range(120)}
    for name in taken:
        (tmp_path / "runs" / name).mkdir(parents=True)
    run("train.py", *SHAPES, "--epochs", "1", "--max-steps", "1", cwd=tmp_path)
    (new,) = {p.name for p in (tmp_path / "runs").iterdir()} - taken
    assert new.endswith("-2") and new[: -len("-2")] in taken and (tmp_path / "runs" / new / "last.pt").is_file()


@pytest.mark.slow
def test_a_resume_finds_its_data_from_another_folder_and_in_another_unicode_form(tmp_path: Path) -> None:
    """Trained on `--data f` (relative) with a class folder written in NFD (as macOS writes names), then
    resumed from another working folder after the data was copied by a system that writes NFC."""
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    write_folder(tmp_path / "f", classes=("a", decomposed), per_class=4)
    tiny = ["--image-size", "67", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--amp", "off"]
    run("train.py", "--data", "f", *tiny, "--name", "u", "--no-plots", cwd=tmp_path)
    for split in ("train", "val"):
        (tmp_path / "f" / split / decomposed).rename(tmp_path / "f" / split / composed)
    (tmp_path / "elsewhere").mkdir()
    run("train.py", "--resume", str(tmp_path / "runs" / "u"), "--epochs", "2", cwd=tmp_path / "elsewhere")
    last = torch.load(tmp_path / "runs" / "u" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["args"]["data"] == str(tmp_path / "f")
    assert [unicodedata.normalize("NFC", name) for name in last["classes"]] == ["a", composed]
