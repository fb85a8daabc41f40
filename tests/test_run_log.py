"""What a run reports (run_log.py): metrics.jsonl, curves, TensorBoard scalars through one seam."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import fill_the_disk_at, png_size

import train
from run_log import ChanceWatch, check_tensorboard, log_epoch, read_metrics, tensorboard_writer
from train_settings import command_line_settings

ROW = {"epoch": 1, "train_loss": 2.0, "train_top1": 0.1, "train_top5": 0.5, "val_loss": 1.9, "val_top1": 0.2,
       "val_top5": 0.6, "lr": 0.01, "epoch_seconds": 3.0, "images_per_second": 100.0}  # fmt: skip


def test_every_row_reaches_metrics_curves_and_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = tensorboard_writer(tmp_path)
    metrics = []
    log_epoch(tmp_path, metrics, ROW, writer)
    log_epoch(tmp_path, metrics, {**ROW, "epoch": 2, "val_top1": 0.4}, writer)
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == metrics and [row["epoch"] for row in rows] == [1, 2]
    assert png_size(tmp_path / "curves.png")[0] > 300
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"train/loss", "val/top1", "lr", "epoch/seconds"} <= set(events.Tags()["scalars"])
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("val/top1")] == [(1, 0.2), (2, 0.4)]
    assert not list(tmp_path.glob("*.tmp"))  # metrics.jsonl is written through a renamed temporary file


def test_tensorboard_flag_without_the_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match="pip install tensorboard"):
        check_tensorboard()
    with pytest.raises(SystemExit) as exit_info:
        command_line_settings(["--tensorboard"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and error.endswith("--tensorboard: the tensorboard package is not installed; "
                                                        "pip install tensorboard")  # fmt: skip


def test_metrics_of_a_resumed_run_keep_the_checkpoints_epochs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "epoch": 2}) + "\n" + '{"epoch": 3, "train_lo')
    assert read_metrics(path, before_epoch=2) == [ROW]  # epoch 2 came after the checkpoint; the torn line is skipped
    assert "ignoring line 3" in capsys.readouterr().out
    assert read_metrics(tmp_path / "none.jsonl", before_epoch=5) == []


def test_chance_watch_warns_once_after_a_few_hundred_steps_at_chance() -> None:
    watch, chance = ChanceWatch(), math.log(10)
    assert not watch.update(chance * 1.01, 200, 10)
    assert not watch.update(chance * 0.5, 50, 10) and watch.steps == 0  # learning: the count starts again
    assert not watch.update(chance, 250, 10)
    assert watch.update(chance * 0.99, 50, 10)  # 300 steps in a row within 3% of ln 10
    assert not watch.update(chance, 50, 10)  # once a run


def test_a_loss_far_above_chance_is_flagged_once() -> None:
    watch, chance = ChanceWatch(), math.log(10)
    assert not watch.far_above(chance * 3, 10)  # bad, but a network can come back from there
    assert watch.far_above(4e12, 10)  # what --lr 0.02 --warmup-steps 1 reached on the built-in data
    assert not watch.far_above(4e12, 10)  # once a run


def test_a_validation_loss_that_is_not_finite_stops_and_writes_no_checkpoint(tmp_path: Path, monkeypatch) -> None:
    def blown_up(*args, **kwargs) -> dict:  # stands in for engine.evaluate on weights that have blown up
        return {"loss": math.nan, "top1": 0.1, "top5": 0.5, "confusion": None}

    monkeypatch.setattr(train, "evaluate", blown_up)
    tiny = ["--train-size", "16", "--val-size", "8", "--batch-size", "8", "--epochs", "1", "--workers", "0"]
    with pytest.raises(SystemExit) as stopped:
        train.main([*tiny, "--amp", "off", "--out-dir", str(tmp_path), "--name", "nan"])
    assert str(stopped.value).startswith(
        "error: the validation loss became nan after epoch 1; no checkpoint written; lower"
    )
    assert not list((tmp_path / "nan").glob("*.pt")) and not (tmp_path / "nan" / "metrics.jsonl").exists()


def stopped_tiny_run(tmp_path: Path, epochs: int, *extra: str) -> str:
    """train.main on 16 built-in images in batches of 8 (two steps an epoch) into tmp_path/full: the line it
    stopped with (it must stop)."""
    tiny = ["--train-size", "16", "--val-size", "8", "--batch-size", "8", "--epochs", str(epochs), "--workers", "0"]
    with pytest.raises(SystemExit) as stopped:
        train.main([*tiny, "--amp", "off", "--out-dir", str(tmp_path), "--name", "full", *extra])
    return str(stopped.value)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a file every write to fails")
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    fill_the_disk_at(monkeypatch, "last.pt", 2)  # the second last.pt goes to a disk with no space
    # Three epochs, so that the second is not the last; --no-plots: no picture is drawn, not even the curves.
    message = stopped_tiny_run(tmp_path, 3, "--no-plots")
    last = tmp_path / "full" / "last.pt"
    assert message.startswith(
        f"error: --out-dir {tmp_path}: {last}: no space left on the disk (0.0 MB written when it ran out, "
    ), message
    assert "free some space or write elsewhere" in message and "\n" not in message
    assert message.endswith(f"; {last} is intact: once there is room, go on with --resume {last.parent}")
    assert torch.load(last, weights_only=True)["epoch"] == 1  # the first epoch's checkpoint, intact
    assert not list((tmp_path / "full").glob("*.tmp")) and not list((tmp_path / "full").glob("*.png"))
    # The rows of both epochs (the second's is written before its checkpoint; a resume drops it), without curves.
    assert (tmp_path / "full" / "metrics.jsonl").read_text().count("\n") == 2


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a file every write to fails")
def test_a_full_disk_while_drawing_keeps_the_previous_picture(tmp_path: Path, monkeypatch) -> None:
    """curves.png is redrawn every epoch: the second drawing finds the disk full. The first stays whole."""
    fill_the_disk_at(monkeypatch, "curves.png", 2)
    message = stopped_tiny_run(tmp_path, 3)
    curves = tmp_path / "full" / "curves.png"
    assert message.startswith(f"error: --out-dir {tmp_path}: {curves}: no space left on the disk (")
    assert "\n" not in message
    assert png_size(curves) == (1500, 450)  # the first epoch's picture, whole
    assert not list((tmp_path / "full").glob("*.tmp"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a file every write to fails")
def test_a_full_disk_while_writing_the_metrics_keeps_the_rows_before(tmp_path: Path, monkeypatch) -> None:
    fill_the_disk_at(monkeypatch, "metrics.jsonl", 2)  # epoch 2's row finds the disk full
    message = stopped_tiny_run(tmp_path, 3, "--no-plots")
    metrics = tmp_path / "full" / "metrics.jsonl"
    assert (
        message.startswith(f"error: --out-dir {tmp_path}: {metrics}: no space left on the disk (")
        and "\n" not in message
    )
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1]  # epoch 1's, whole
    assert torch.load(tmp_path / "full" / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a file every write to fails")
def test_a_disk_full_before_the_first_epoch_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """The sample images are a new run's first files: a disk already full is the same one line, not a traceback."""
    fill_the_disk_at(monkeypatch, "00_", 1)
    message = stopped_tiny_run(tmp_path, 1)
    samples = tmp_path / "full" / "samples"
    assert message.startswith(f"error: --out-dir {tmp_path}: {samples}/00_") and "\n" not in message
    assert ".png: no space left on the disk (0.0 MB written when it ran out, " in message
    assert not list((tmp_path / "full").rglob("*.tmp")) and not list((tmp_path / "full").rglob("*.pt"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a file every write to fails")
def test_a_first_checkpoint_on_a_full_disk_says_about_how_much_it_needs(tmp_path: Path, monkeypatch) -> None:
    from atomic_files import DiskFullError, save_atomically

    fill_the_disk_at(monkeypatch, "last.pt", 1)
    with pytest.raises(DiskFullError) as caught:  # no previous version to go by: the tensors' bytes
        save_atomically({"model": {"w": torch.zeros(1_000_000)}, "epoch": 1}, tmp_path / "last.pt")
    assert str(caught.value).startswith(f"{tmp_path / 'last.pt'}: no space left on the disk (0.0 MB written when it ")
    assert "about 4.0 MB needed); free some space or write elsewhere" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
