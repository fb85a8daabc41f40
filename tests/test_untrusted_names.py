"""Class names we did not write (folder names, label files, checkpoints' metadata) through the pictures, the
printed results, the result files and the sample files: matplotlib's math text (`$5_to_$10`), bytes that are
not UTF-8, terminal escapes, forged lines, spreadsheet formulas, byte-order marks, names too long for a file
name. A picture that cannot be drawn is one warning line, after the checkpoints are saved."""

import csv
import json
import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from helpers import CHECKPOINT_PRESET, png_size, run, run_cli, save_checkpoint_file
from PIL import Image

import plots
import run_files
import train
from alexnet import AlexNet
from errors import DataError
from imagenet import MAPPING_FILE, META_FILE, class_names, read_synset_mapping

# What matplotlib reads as math text, a byte that is not UTF-8 (as os.fsdecode keeps it), a terminal escape,
# a newline, a name no font here has a glyph for, and one far too long to draw in a cell.
UNDRAWABLE = ["$5_to_$10", "a$^$b", "caf\udce9", "\x1b[31mred", "new\nline", "\u732b", "l" * 240]
FOLDER = ["--image-size", "67", "--workers", "0", "--batch-size", "16", "--epochs", "1", "--log-interval", "1"]
PICTURES = ("curves.png", "filters.png", "confusion.png", "predictions.png", "neighbours.png")


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, without its checkpoints afterwards (~670 MB a run), even when the test failed."""
    yield tmp_path
    for path in tmp_path.rglob("*.pt"):
        path.unlink()


def write_folder(root: Path, classes: list[bytes], train_count: int = 3, val_count: int = 2) -> Path:
    """An image folder root/{train,val}/<class>/<i>.png of random 40x40 PNGs, its class folders named by
    raw bytes (a name that is not UTF-8 is made as Linux allows it)."""
    rng = np.random.default_rng(0)
    for split, count in ((b"train", train_count), (b"val", val_count)):
        for name in classes:
            folder = os.path.join(os.fsencode(root), split, name)
            os.makedirs(folder)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, b"%d.png" % i), format="PNG")
    return root


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr


# --- train.py: the pictures, the checkpoints, the sample files -------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_run_on_classes_matplotlib_reads_as_math_or_not_utf8_saves_checkpoints_and_pictures(work: Path) -> None:
    """The scripts' stdout is a UTF-8 terminal's (the script server's: strict), so a name printed raw would fail."""
    classes = [b"$5_to_$10", b"a$^$b", b"caf\xe9", b"\x1b[31mred"]
    data = write_folder(work / "data", classes)
    result = run("train.py", "--data", str(data), *FOLDER, "--name", "odd", cwd=work, check=False)
    no_traceback(result)
    run_dir = work / "runs" / "odd"
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    for picture in PICTURES:
        assert png_size(run_dir / picture)[0] > 100, picture
    assert "warning" not in result.stdout and "\x1b" not in result.stdout, result.stdout
    samples = sorted(path.name for path in (run_dir / "samples").iterdir())
    assert samples and all(name.isprintable() and name.encode("utf-8") for name in samples), samples
    assert any(name.endswith("_$5_to_$10.png") for name in samples) and any(
        name.endswith("_caf\\xe9.png") for name in samples
    ), samples


@pytest.mark.slow
def test_a_class_name_of_240_characters_gives_bounded_sample_file_names(work: Path) -> None:
    long = "l" * 240
    data = write_folder(work / "data", [long.encode(), b"b"])
    result = run("train.py", "--data", str(data), *FOLDER, "--no-plots", "--name", "long", cwd=work, check=False)
    no_traceback(result)
    samples = sorted((work / "runs" / "long" / "samples").iterdir())
    assert len(samples) == 4 and all(len(path.name.encode()) <= 200 for path in samples), samples
    assert len({path.name for path in samples}) == 4 and all(path.suffix == ".png" for path in samples)
    assert samples[2].name.startswith("02_lll") and (work / "runs" / "long" / "last.pt").is_file()
    assert Image.open(samples[2]).size == (40, 40)
    assert f"Try: python inference.py {samples[0].relative_to(work)}" in result.stdout


@pytest.mark.slow  # (in-process, but a whole run: 6-9 s)
@pytest.mark.parametrize("failing", ["plot_confusion", "nearest_training_images"])
def test_a_picture_that_cannot_be_drawn_is_one_warning_after_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, failing: str
) -> None:
    run_dir, seen = tmp_path / "broken", []

    def broken(*args, **kwargs) -> None:
        seen.append(sorted(path.name for path in run_dir.glob("*.pt")))  # what was saved when the picture was drawn
        raise ValueError("matplotlib cannot draw this\nsecond line of the reason")

    monkeypatch.setattr(run_files, failing, broken)
    tiny = ["--train-size", "32", "--val-size", "8", "--batch-size", "16", "--epochs", "1", "--workers", "0"]
    train.main([*tiny, "--amp", "off", "--out-dir", str(tmp_path), "--name", "broken"])
    out = capsys.readouterr().out
    assert seen == [["best.pt", "last.pt"]]  # both checkpoints of the last epoch were saved before the picture
    warnings_given = [line for line in out.splitlines() if line.startswith("warning")]
    picture = "confusion.png" if failing == "plot_confusion" else "neighbours.png"
    assert warnings_given == [
        f"warning: could not draw {run_dir / picture} (ValueError: matplotlib cannot draw this); the run goes on"
    ], out
    assert not (run_dir / picture).exists()
    others = [name for name in PICTURES if name != picture]
    assert all((run_dir / name).is_file() for name in others), sorted(p.name for p in run_dir.iterdir())
    assert "Done: best validation top-1" in out


# --- plots.py: every picture draws any name as plain text ------------------------------------------------------


def images(count: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 24, 24), dtype=torch.uint8)


def draw_every_picture(folder: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """Each picture that shows class names, drawn with `names` -> the size of each PNG."""
    count = len(names)
    plots.plot_predictions(images(count), list(range(count)), [(i + 1) % count for i in range(count)], names,
                           folder / "predictions.png", torch.full((count,), 0.5))  # fmt: skip
    plots.plot_confusion(torch.ones(count, count, dtype=torch.long), names, folder / "confusion.png")
    plots.plot_topk(images(1)[0], [(name, 1 / count) for name in names], folder / "topk.png", title=names[0])
    neighbour_labels = [[(q + i) % count for i in range(3)] for q in range(2)]
    plots.plot_neighbours(images(2), [0, 1], images(6).view(2, 3, 3, 24, 24), neighbour_labels, names,
                          folder / "neighbours.png")  # fmt: skip
    return {path.name: png_size(path) for path in folder.glob("*.png")}


def test_every_picture_draws_names_matplotlib_would_read_as_math_or_cannot_draw(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no glyph-missing (or other) warning reaches the user's terminal either
        sizes = draw_every_picture(tmp_path, UNDRAWABLE)
    assert sizes["confusion.png"] == (800, 800) and sizes["topk.png"] == (1000, 400)
    assert sizes["predictions.png"] == (200 * len(UNDRAWABLE), 240) and sizes["neighbours.png"] == (4 * 160, 2 * 190)


def test_pictures_draw_names_as_plain_text_even_where_matplotlibrc_asks_for_latex(tmp_path: Path) -> None:
    """text.usetex in a user's matplotlibrc would send every name (and our "%") to LaTeX: our pictures do not."""
    with matplotlib.rc_context({"text.usetex": True}):
        sizes = draw_every_picture(tmp_path, ["50%_off", "$x$", "a_b#c&d"])
    assert sizes["confusion.png"] == (800, 800)


# --- inference.py: printed results, --output, --json, --plot, --labels ------------------------------------------

HOSTILE = ["\x1b[31mred", "cat\nnot a result: 100%", '=HYPERLINK("http://x")', "caf\udce9"]


@pytest.fixture(scope="module")
def hostile_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkpoint (as train.py writes them) whose class names are a terminal escape, a forged line, a formula and
    a name that is not UTF-8; and an image beside it."""
    folder = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    save_checkpoint_file(folder / "best.pt", AlexNet(num_classes=len(HOSTILE)), HOSTILE, asdict(CHECKPOINT_PRESET))
    pixels = np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "photo.png")
    yield folder
    (folder / "best.pt").unlink()


@pytest.mark.slow
def test_inference_prints_and_writes_hostile_class_names_safely(hostile_checkpoint: Path, tmp_path: Path) -> None:
    photo, checkpoint = hostile_checkpoint / "photo.png", hostile_checkpoint / "best.pt"
    flags = [str(photo), "--checkpoint", str(checkpoint), "--topk", "4"]
    outputs = ["--output", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "top.png")]
    result = run("inference.py", *flags, *outputs, cwd=tmp_path, check=False)  # stdout: a strict UTF-8 terminal's
    no_traceback(result)
    lines = result.stdout.splitlines()
    assert "\x1b" not in result.stdout and len(lines) == 5, result.stdout  # the path, then one line per class
    assert lines[0] == f"{photo}:" and all(re.match(r"  +\d+\.\d\d%  \S", line) for line in lines[1:]), lines
    assert any(line.endswith("  cat\\x0anot a result: 100%") for line in lines) and any(
        "caf\\xe9" in line for line in lines
    )
    assert png_size(tmp_path / "top.png") == (1000, 400)
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as file:
        (header, row) = list(csv.reader(file))
    names = row[2::2]
    assert sorted(names) == sorted(
        ["\\x1b[31mred", "cat\\x0anot a result: 100%", '\'=HYPERLINK("http://x")', "caf\\xe9"]
    )
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row)

    result = run("inference.py", *flags, "--json", "--output", str(tmp_path / "r.jsonl"), cwd=tmp_path, check=False)
    no_traceback(result)
    assert "\x1b" not in result.stdout and len(result.stdout.splitlines()) == 1
    printed = [prediction["class"] for prediction in json.loads(result.stdout)["predictions"]]
    assert sorted(printed) == sorted(HOSTILE)  # JSON keeps the names exactly, escaped by the format itself
    written = json.loads((tmp_path / "r.jsonl").read_text(encoding="utf-8"))["predictions"]
    assert sorted(prediction["class"] for prediction in written) == sorted(HOSTILE)


def test_a_labels_file_with_a_byte_order_mark_names_the_first_class_without_it(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture
) -> None:
    """Windows' Notepad saves "UTF-8" with a byte-order mark: it is not part of the first name."""
    labels = tmp_path / "labels.txt"
    labels.write_text("first\nsecond\nthird\n", encoding="utf-8-sig")
    pixels = np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    flags = ["--checkpoint", str(checkpoint_file), "--labels", str(labels), "--topk", "3", "--json"]
    status, out, err = run_cli(capsys, str(tmp_path / "photo.png"), *flags)
    assert status == 0, err
    assert sorted(p["class"] for p in json.loads(out)["predictions"]) == ["first", "second", "third"]


# --- imagenet.py: LOC_synset_mapping.txt and meta.bin ----------------------------------------------------------


@pytest.mark.parametrize("line", ["n01440764 ,", "n01440764 , ,", "n01440764 ,\t,"])
def test_a_malformed_line_of_the_synset_mapping_is_one_error_naming_the_file_and_line(
    tmp_path: Path, line: str
) -> None:
    mapping = tmp_path / MAPPING_FILE
    mapping.write_text(f"n02111889 Samoyed, Samoyede\n{line}\n")
    with pytest.raises(DataError) as raised:
        class_names(tmp_path, ["n01440764", "n02111889"], "data_root")
    message = str(raised.value)
    assert message.startswith(f"{mapping} line 2: ") and "\n" not in message and raised.value.setting == "data_root"


def test_a_synset_mapping_with_a_byte_order_mark_or_tabs_is_read(tmp_path: Path) -> None:
    mapping = tmp_path / MAPPING_FILE
    mapping.write_text("n01440764\ttench, Tinca tinca\nn02111889 Samoyed, Samoyede\n", encoding="utf-8-sig")
    assert read_synset_mapping(mapping, "data")["n01440764"] == ["tench", "Tinca tinca"]
    assert class_names(tmp_path, ["n01440764", "n02111889"], "data") == ["tench", "Samoyed"]


@pytest.mark.parametrize("words", [(), ("",), (3,)])
def test_a_meta_bin_without_words_for_a_class_is_one_error_naming_it(tmp_path: Path, words: tuple) -> None:
    torch.save(({"n01440764": words, "n02111889": ("Samoyed",)}, []), tmp_path / META_FILE)
    with pytest.raises(DataError) as raised:
        class_names(tmp_path, ["n01440764", "n02111889"], "data")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / META_FILE}: ") and "n01440764" in message and "\n" not in message
