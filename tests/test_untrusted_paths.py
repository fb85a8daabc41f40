"""Paths, names and counts we did not choose: symbolic links that loop, file names at the length limit, a run
folder left by a failed start, thousands of empty files, more --workers than cores, and a folder of large photos
handed to inference.py (issue: untrusted .pt2 files, pictures before checkpoints, metadata checked for sense)."""

import csv
import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_SHAPES, png_size, run, run_cli
from PIL import Image

import atomic_files
import data_pipeline
import folders
import inference
import run_files
import train
from data_pipeline import DataConfig, load_data
from errors import BadImageError, DataError
from image_files import load_image
from train_settings import command_line_settings, fit_workers

NAME_MAX = 255  # bytes, on every file system the project writes to (ext4, XFS, btrfs, APFS, tmpfs)


def write_folder(root: Path, per_class: int = 3) -> Path:
    """root/{train,val}/{a,b}/<i>.png: 40x40 PNGs."""
    for split in ("train", "val"):
        for label, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 40), (100 * label, 50 * i, 30)).save(root / split / name / f"{i}.png")
    return root


def load(root: Path, tmp_path: Path, **overrides) -> tuple:
    """load_data on an image folder -> (train, val)."""
    options = dict(data=str(root), data_root=str(tmp_path / "data"), image_size=67, loader="memory", workers=0)
    data = load_data(DataConfig(batch_size=2, **{**options, **overrides}), torch.device("cpu"))
    return data.train, data.val


# --- Symbolic links that loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["memory", "packed", "stream"])
def test_a_symlink_loop_in_a_class_folder_is_counted_like_any_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, loader: str
) -> None:
    root = write_folder(tmp_path / "f")
    (root / "train" / "a" / "loop.png").symlink_to("loop.png")  # itself
    (root / "train" / "b" / "ping.png").symlink_to("pong.png")  # two that point at each other
    (root / "train" / "b" / "pong.png").symlink_to("ping.png")
    train_split, _ = load(root, tmp_path, loader=loader)
    if loader != "stream":  # (streamed files are read, and counted, as the epochs go)
        assert len(train_split) == 6
        assert "skipped 3 unreadable image file(s)" in (err := capsys.readouterr().err) and "loop.png" in err
        assert "a symbolic link that loops" in err
    with pytest.raises(DataError, match=r"^3 image files cannot be read \(more than the 2 allowed\), e\.g\. \S*loop"):
        load(root, tmp_path, loader=loader, max_bad_files=2)


def test_a_symlink_loop_reads_as_one_line(tmp_path: Path) -> None:
    loop = tmp_path / "loop.jpg"
    loop.symlink_to("loop.jpg")
    with pytest.raises(BadImageError) as caught:
        load_image(loop, 3)
    assert str(caught.value) == f"{loop}: a symbolic link that loops (it leads back to itself); remove or repoint it"


# --- Names at the length limit ------------------------------------------------------------------------------

LONG_NAMES = {
    "250 ASCII characters": "n" * 246 + ".csv",
    "250 bytes of UTF-8": "\u00e9" * 123 + ".csv",  # 2 bytes each
    "255 bytes of UTF-8 in 3-byte letters": "\u732b" * 83 + "x.csv",
}


@pytest.mark.parametrize("name", LONG_NAMES.values(), ids=LONG_NAMES.keys())
def test_a_file_named_up_to_the_limit_is_written_atomically(tmp_path: Path, name: str) -> None:
    seen = []

    def write(file) -> None:
        seen.append(Path(file.name))
        file.write(b"data")

    atomic_files.write_atomically(tmp_path / name, write)
    assert (tmp_path / name).read_bytes() == b"data" and os.listdir(tmp_path) == [name]
    (tmp, *_) = seen
    assert tmp.parent == tmp_path and tmp.name.endswith(".tmp") and len(os.fsencode(tmp.name)) <= NAME_MAX
    # It starts as the file's name (for people, and for the tests' full disks), as far as it can.
    assert len(os.fsencode(os.path.commonprefix([tmp.name, name]))) >= 200


def test_two_long_names_with_the_same_start_get_temporary_files_of_their_own(tmp_path: Path) -> None:
    names = ["x" * 250 + "1.png", "x" * 250 + "2.png"]
    temporary = []
    for name in names:
        atomic_files.write_atomically(tmp_path / name, lambda f: temporary.append(f.name))
    assert len(set(temporary)) == 2 and sorted(os.listdir(tmp_path)) == names


@pytest.mark.parametrize("name", ["o" * 246, "\u00e9" * 123], ids=["ASCII", "UTF-8"])
def test_inference_writes_output_and_plot_files_with_250_byte_names(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture, name: str
) -> None:
    image = tmp_path / "0.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(image)
    output, plot = tmp_path / f"{name}.csv", tmp_path / f"{name}.png"
    assert len(os.fsencode(output.name)) == len(os.fsencode(plot.name)) == 250
    flags = ["--checkpoint", str(checkpoint_file), "--output", str(output), "--plot", str(plot)]
    status, out, err = run_cli(capsys, str(image), *flags)
    assert status == 0, err
    assert png_size(plot) == (1000, 400) and output.read_text().startswith("image,")
    assert not list(tmp_path.glob("*.tmp"))


# --- A run that fails before its first checkpoint -----------------------------------------------------------


@pytest.mark.slow
def test_a_run_that_fails_before_its_first_checkpoint_leaves_its_name_free(tmp_path: Path) -> None:
    tiny = [*TINY_SHAPES, "--epochs", "1", "--name", "again"]
    failed = run("train.py", *tiny, "--lr", "1e30", "--warmup-steps", "0", cwd=tmp_path, check=False)
    assert failed.returncode == 1 and "no checkpoint written" in failed.stderr, failed.stderr
    assert not (tmp_path / "runs" / "again").exists()
    assert failed.stderr.splitlines()[-1] == (
        "note: removed runs/again/, which held no checkpoint (the run stopped before its first): --name again "
        "can be used again"
    )
    run("train.py", *tiny, cwd=tmp_path)  # the same --name, now free
    assert (tmp_path / "runs" / "again" / "last.pt").is_file()


def test_a_name_whose_folder_holds_no_checkpoint_is_refused_without_sending_to_resume(tmp_path: Path) -> None:
    """A folder that remove_unsaved_run could not remove (a run killed with SIGKILL, a notebook's run that failed)
    has nothing to --resume: the line says so, before anything is loaded, and the folder is left as it is."""
    kept = tmp_path / "runs" / "early"
    (kept / "samples").mkdir(parents=True)
    flags = [*TINY_SHAPES, "--out-dir", str(tmp_path / "runs"), "--device", "cpu"]
    with pytest.raises(SystemExit) as refused:
        train.main([*flags, "--name", "early"])
    assert refused.value.code == (
        f"error: run directory {kept} already exists and holds no checkpoint (a run killed before its first epoch "
        "ended?): remove it or choose another --name"
    )
    assert sorted(path.name for path in kept.iterdir()) == ["samples"]
    (kept / "last.pt").write_bytes(b"weights")  # a checkpoint: resuming is what to do
    with pytest.raises(SystemExit, match=r"already exists; choose another --name or --resume .*early$"):
        train.main([*flags, "--name", "early"])


def made_run_dir(tmp_path: Path) -> tuple[Path, os.stat_result]:
    run_dir = run_files.make_run_dir(tmp_path / "runs" / "r", named=True)
    (run_dir / "samples").mkdir()
    (run_dir / "samples" / "0_a.png").write_bytes(b"png")
    return run_dir, run_dir.stat()


def test_a_failed_run_folder_is_removed_only_when_it_holds_nothing_of_value(tmp_path: Path, capsys) -> None:
    run_dir, made = made_run_dir(tmp_path)
    run_files.remove_unsaved_run(run_dir, made, os.getpid())
    assert not run_dir.exists() and "note: removed" in capsys.readouterr().err

    run_dir, made = made_run_dir(tmp_path)  # a checkpoint: kept
    (run_dir / "last.pt").write_bytes(b"weights")
    run_files.remove_unsaved_run(run_dir, made, os.getpid())
    assert (run_dir / "last.pt").exists()

    (run_dir / "last.pt").unlink()  # a file older than the folder (not this run's): kept
    old = run_dir / "notes.txt"
    old.write_text("mine")
    os.utime(old, ns=(made.st_mtime_ns - 10**9, made.st_mtime_ns - 10**9))
    run_files.remove_unsaved_run(run_dir, made, os.getpid())
    assert old.exists()

    old.unlink()  # another process (a forked DataLoader worker): kept
    run_files.remove_unsaved_run(run_dir, made, os.getpid() + 1)
    assert run_dir.exists()

    run_dir.rename(tmp_path / "moved")  # another folder of that name now: kept
    run_dir.mkdir()
    run_files.remove_unsaved_run(run_dir, made, os.getpid())
    assert run_dir.exists() and capsys.readouterr().err == ""


# --- Many empty files ---------------------------------------------------------------------------------------


def many_empty_files(tmp_path: Path, count: int = 300) -> Path:
    root = write_folder(tmp_path / "f")
    for i in range(count):
        (root / "train" / "a" / f"empty{i:03d}.png").write_bytes(b"")
    return root


@pytest.mark.parametrize("loader", ["memory", "stream", "packed"])
def test_many_empty_files_are_refused_before_any_image_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, loader: str
) -> None:
    root = many_empty_files(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(folders, "open_image", never)
    monkeypatch.setattr(folders, "decode_for_store", never)
    with pytest.raises(DataError) as caught:
        load(root, tmp_path, loader=loader, max_bad_files=10)
    assert caught.value.setting == "max_bad_files"
    first = root / "train" / "a" / "empty000.png"
    assert str(caught.value) == (
        f"300 image files cannot be read (more than the 10 allowed), e.g. {first}: empty file (0 bytes); found "
        "before decoding: 300 empty; fix or remove them, or allow more"
    )
    assert capsys.readouterr().err == ""
    if loader == "memory":  # within the limit, they are skipped as any unreadable file is
        monkeypatch.undo()
        train_split, _ = load(root, tmp_path, loader=loader, max_bad_files=300)
        assert len(train_split) == 6 and "skipped 300 unreadable image file(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_train_refuses_a_folder_of_empty_files_in_one_line(tmp_path: Path) -> None:
    root = many_empty_files(tmp_path)
    flags = ["--data", str(root), "--image-size", "67", "--workers", "0", "--max-bad-files", "10", "--epochs", "1"]
    result = run("train.py", *flags, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: --max-bad-files 10: 300 image files cannot be read (more than the 10 allowed), e.g. "
        f"{root}/train/a/empty000.png: empty file (0 bytes); found before decoding: 300 empty; fix or remove them, "
        "or allow more"
    ]
    assert "Decoding" not in result.stdout and len(result.stdout.splitlines()) <= 3
    assert not (tmp_path / "data" / "cache").exists()


# --- More --workers than cores ------------------------------------------------------------------------------


def fitted_workers(workers: str) -> int:
    """--workers as train.py uses it, once cut to the CPUs there are."""
    config = command_line_settings(["--workers", workers]).data
    fit_workers(config)
    return config.workers


def test_more_workers_than_cpus_are_cut_to_the_cpus_with_one_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert data_pipeline.usable_cpus() == 2
    config = command_line_settings(["--workers", "200"]).data
    fit_workers(config)
    assert config.workers == 2
    assert capsys.readouterr().out == "note: --workers 200 is more than the 2 CPUs here; using 2\n"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # e.g. taskset -c 3
    assert fitted_workers("2") == 1
    assert capsys.readouterr().out == "note: --workers 2 is more than the 1 CPU here; using 1\n"
    assert fitted_workers("1") == 1 and capsys.readouterr().out == ""


@pytest.mark.slow
def test_train_with_200_workers_uses_the_cpus_there_are_without_a_warning(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f")
    flags = ["--data", str(root), "--image-size", "67", "--epochs", "1", "--batch-size", "4", "--no-plots"]
    result = run("train.py", *flags, "--workers", "200", "--loader", "stream", cwd=tmp_path)
    cpus = data_pipeline.usable_cpus()
    if cpus < 200:
        assert f"note: --workers 200 is more than the {cpus} CPU{'s' if cpus > 1 else ''} here; using {cpus}\n" in (
            result.stdout
        )
    assert "Warning" not in result.stderr, result.stderr


# --- inference.py on a folder of photos ---------------------------------------------------------------------


def test_inference_holds_a_batch_of_decoded_images_at_a_time_and_reports_in_order(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """13 photos, a file that is not an image among them and a folder without images: with --batch-size 4,
    at most 4 decoded photos are alive at once; the lines, the CSV rows and the pictures' numbers are those of
    one batch of all of them."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(13):
        Image.fromarray(rng.integers(0, 256, (90 + i, 120, 3), dtype=np.uint8)).save(photos / f"{i:02d}.png")
    (photos / "05.png").write_text("not an image")
    (tmp_path / "nothing").mkdir()
    alive, most = set(), [0]
    real = inference.load_image

    def counted(path, channels):
        image = real(path, channels)
        key = id(image)
        alive.add(key)
        weakref.finalize(image, alive.discard, key)
        most[0] = max(most[0], len(alive))
        return image

    monkeypatch.setattr(inference, "load_image", counted)
    inputs = [str(photos / "00.png"), str(tmp_path / "nothing"), str(photos)]
    results = {}
    for batch in ("4", "64"):
        most[0] = 0
        out = tmp_path / f"out{batch}"
        out.mkdir()
        flags = ["--checkpoint", str(checkpoint_file), "--batch-size", batch, "--topk", "2"]
        status, stdout, stderr = run_cli(
            capsys, *inputs, *flags, "--output", str(out / "r.csv"), "--plot", str(out / "p.png")
        )
        assert status == 1
        rows = list(csv.reader((out / "r.csv").read_text().splitlines()))
        rows = [[cell[:6] if i > 1 and i % 2 else cell for i, cell in enumerate(row)] for row in rows]  # (~1e-7)
        results[batch] = (stdout, stderr, rows, sorted(p.name for p in out.glob("p-*.png")), most[0])
    stdout, stderr, rows, pictures, most_alive = results["4"]
    assert most_alive <= 4 and results["64"][4] == 13
    assert results["4"][:4] == results["64"][:4]
    assert [row[0] for row in rows[1:]] == [
        str(photos / "00.png"),
        str(tmp_path / "nothing"),
        *(str(photos / f"{i:02d}.png") for i in range(13)),
    ]
    assert rows[8][0].endswith("05.png") and "not an image" in rows[8][1]
    assert pictures == sorted(f"p-{i}.png" for i in range(14) if i != 6)  # 05.png is the 7th image file
    assert stderr.splitlines()[-1] == "2 of 15 inputs could not be classified"


def test_inference_plots_large_photos_from_a_copy_at_the_pictures_size(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3000 x 2000 photo is drawn from a copy at most 1024 pixels on its longer side: what a 1000 x 400 picture
    shows of it, at a ninth of the memory."""
    photo = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(photo)
    drawn = []
    monkeypatch.setattr("plots.plot_topk", lambda image, *args, **kwargs: drawn.append(tuple(image.shape)))
    status, _, err = run_cli(
        capsys, str(photo), "--checkpoint", str(checkpoint_file), "--plot", str(tmp_path / "p.png")
    )
    assert status == 0, err
    assert drawn == [(3, 683, 1024)]
