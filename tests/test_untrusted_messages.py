"""Names we did not write inside the messages that reach the terminal (an error's text a script prints, a library's
warning line), the CSV cells of inference.py --output, what the decode cache removes from a folder it shares, and
bench.py's --workers on a machine with fewer CPUs."""

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CHECKPOINT_PRESET, run_cli, save_checkpoint_file
from PIL import Image

import bench
import data_pipeline
import folders
from alexnet import AlexNet
from result_files import ResultRow, results_csv

ESCAPE = "\x1b[31mred"  # a terminal escape: it would turn the user's terminal red


def test_a_script_prints_an_error_naming_a_checkpoints_class_without_its_escape(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(0)
    checkpoint = save_checkpoint_file(tmp_path / "best.pt", AlexNet(num_classes=1), [ESCAPE], asdict(CHECKPOINT_PRESET))
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    status, _, err = run_cli(capsys, str(tmp_path / "photo.png"), "--checkpoint", str(checkpoint))
    assert status == 1 and "\x1b" not in err, err
    assert err == f"error: {checkpoint}: has one class (\\x1b[31mred), so it names it for any image; train it on " \
        "two or more classes\n"  # fmt: skip


def test_a_library_warning_names_a_class_folder_without_its_escape(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train = [(tmp_path / "train" / name / "a.png", label) for label, name in enumerate(["cat", ESCAPE])]
    folders.check_samples(tmp_path, ["cat", ESCAPE], train, [(tmp_path / "val" / "cat" / "b.png", 0)])
    err = capsys.readouterr().err
    assert "\x1b" not in err and err == f"warning: {tmp_path}/val has no images of class \\x1b[31mred\n", err


def test_a_csv_cell_keeps_backslashes_and_escapes_only_what_cannot_be_shown() -> None:
    text = results_csv([ResultRow("C:\\photos\\cat.png", predictions=[(ESCAPE, 1.0)]), ResultRow("=1+1", error="x")])
    rows = text.splitlines()
    assert rows[1] == "C:\\photos\\cat.png,,\\x1b[31mred,1.0", rows
    assert rows[2] == "'=1+1,x,,", rows  # still no formula


def test_the_decode_cache_removes_only_its_own_stale_temporary_files(tmp_path: Path) -> None:
    split = tmp_path / "data" / "train"
    for name in ("a", "b"):
        (split / name).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(split / name / "x.png")
    samples = [(split / "a" / "x.png", 0), (split / "b" / "x.png", 1)]
    cache = tmp_path / "shared-tmp"  # e.g. --cache-dir /tmp: other programs' files beside ours
    cache.mkdir()
    theirs = cache / "foo.123.tmp"
    ours = cache / f"{folders.listing_name(split, 3, 40)}-0123456789abcdef.pt.{2**22 + 7}.tmp"  # a killed write of ours
    hour_ago = time.time() - 2 * 3600
    for path in (theirs, ours):
        path.write_bytes(b"x")
        os.utime(path, (hour_ago, hour_ago))
    folders.cached_decode(split, samples, 3, 40, 0, cache)
    assert theirs.exists() and not ours.exists()


def test_bench_cuts_workers_to_the_usable_cpus_with_one_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert data_pipeline.usable_cpus() == 2
    assert bench.get_args(["--workers", "200", "--device", "cpu"]).workers == 2
    assert capsys.readouterr().out == "note: --workers 200 is more than the 2 CPUs here; using 2\n"
