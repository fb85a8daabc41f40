"""What the data and the settings read back from disk may not do (issue 34): a pack's pack.json, index and
progress lines, and the decode cache, checked for sense before anything is allocated; a resumed run's saved
settings checked as the command line's are; --verify-pack for images changed behind the same sizes and times;
the temporary files of killed writes cleaned up; a killed data-loading worker as one line and a checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, SCRIPT_ENV, copy_run, run
from PIL import Image

import folders
import packs
from checkpoints import save_checkpoint
from data_pipeline import DataConfig, InMemory, Packed, load_data
from errors import DataError
from folders import folder_samples
from packs import build_pack, pack_folder
from train_settings import command_line_settings, get_settings

CPU = torch.device("cpu")
CLASSES = ["a", "b"]


def write_folder(root: Path, train_count: int = 6, val_count: int = 2, side: int = 30) -> Path:
    """An image folder of uncompressed PNGs of random pixels (another picture of the same side is a file of the
    same length), with one unreadable file in train/a/ (so that packs have a "bad" list)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_count), ("val", val_count)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png", compress_level=0)
    (root / "train" / "a" / "empty.png").write_bytes(b"")
    return root


def samples_of(root: Path, split: str = "train") -> list:
    return folder_samples(root / split, CLASSES)[0]


def warnings_of(err: str) -> str:
    """stderr without the warnings of packing or decoding the folder's unreadable file."""
    return "\n".join(line for line in err.strip().splitlines() if not line.startswith("warning: skipping"))


def files_of(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(path.iterdir())}


class Decodes:
    """packs.decode_for_store, counted; Ctrl-C at call `stop_at`."""

    def __init__(self, real: Callable, stop_at: int | None = None) -> None:
        self.real, self.calls, self.stop_at = real, 0, stop_at

    def __call__(self, path: Path, channels: int, size: int) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.real(path, channels, size)


def count_decodes(monkeypatch: pytest.MonkeyPatch, stop_at: int | None = None) -> Decodes:
    decodes = Decodes(folders.decode_for_store, stop_at)
    monkeypatch.setattr(packs, "decode_for_store", decodes)
    return decodes


def pack(pack_dir: Path, root: Path, fmt: str = "raw", **options) -> tuple[Path, dict]:
    """build_pack of the training split at 24 px in colour, without worker processes."""
    return build_pack(pack_dir, root / "train", samples_of(root), 3, 24, 0, fmt, **options)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training images (and an unreadable file) and 4 validation images, never modified."""
    return write_folder(tmp_path_factory.mktemp("folder") / "f")


# --- pack.json, index.npy and progress.jsonl checked for sense ------------------------------------------------


def edit_json(path: Path, **fields) -> None:
    meta = json.loads((path / "pack.json").read_text())
    (path / "pack.json").write_text(json.dumps({**meta, **fields}))


def edit_index(path: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    """Change index.npy, and its checksum in pack.json with it: what is left to find it is a check for sense."""
    index = edit(np.load(path / "index.npy"))
    np.save(path / "index.npy", index)
    edit_json(path, index_crc=packs.index_checksum(index))


PACK_JSON_NONSENSE = [
    ("size", 100000),  # 100000 x 100000 x 3 bytes an image: a batch of 16 would take 480 GB
    ("size", 0),
    ("size", "24"),
    ("count", 10**12),
    ("count", True),
    ("channels", 7),
    ("format", "../../etc/passwd"),
    ("bad", [3]),
    ("bad", ["/etc/passwd"]),
    ("bad", "abc"),
]


@pytest.mark.parametrize("field, value", PACK_JSON_NONSENSE, ids=[f"{f}={v!r}" for f, v in PACK_JSON_NONSENSE])
def test_a_pack_json_field_that_makes_no_sense_is_named_and_the_pack_packed_again(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, field, value
) -> None:
    path, _ = pack(tmp_path / "packs", folder)
    whole = files_of(path)
    edit_json(path, **{field: value})
    capsys.readouterr()
    decodes = count_decodes(monkeypatch)
    again, meta = pack(tmp_path / "packs", folder)
    err = warnings_of(capsys.readouterr().err)
    assert err.startswith(f"warning: {path / 'pack.json'}: {field} ") and err.endswith("; packing again"), err
    assert len(err.splitlines()) == 1
    assert again == path and decodes.calls == len(samples_of(folder)) and files_of(path) == whole
    assert meta["size"] == 24 and meta["count"] == len(samples_of(folder))


INDEX_NONSENSE = {
    "rows past the end": ("rows", "raw", lambda index: index.__setitem__((0, -1), 10**9) or index),
    "rows repeated": ("rows", "raw", lambda index: index.__setitem__((0, 1), index[0, 0]) or index),
    "a label of no class": ("labels", "raw", lambda index: index.__setitem__((1, 2), 7) or index),
    "a label of the other class": ("labels", "raw", lambda index: index.__setitem__((1, 2), 1 - index[1, 2]) or index),
    "a checksum of 40 bits": ("crcs", "raw", lambda index: index.__setitem__((2, 0), 2**40) or index),
    "floats": ("index", "raw", lambda index: index.astype(np.float64)),
    "a row too many": ("index", "raw", lambda index: np.concatenate([index, index[:1]])),
    "an image of 1 TB": ("lengths", "jpeg", lambda index: index.__setitem__((4, 0), 10**12) or index),
    "an image past the end": ("starts", "jpeg", lambda index: index.__setitem__((3, 1), 10**9) or index),
}


@pytest.mark.parametrize("damage", list(INDEX_NONSENSE))
def test_an_index_that_makes_no_sense_is_named_and_the_pack_packed_again(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, damage: str
) -> None:
    field, fmt, edit = INDEX_NONSENSE[damage]
    path, _ = pack(tmp_path / "packs", folder, fmt)
    whole = files_of(path)
    edit_index(path, edit)
    capsys.readouterr()
    decodes = count_decodes(monkeypatch)
    again, _ = pack(tmp_path / "packs", folder, fmt)
    err = warnings_of(capsys.readouterr().err)
    assert err.startswith(f"warning: {path / 'index.npy'}: {field}") and err.endswith("; packing again"), err
    assert len(err.splitlines()) == 1
    assert again == path and decodes.calls == len(samples_of(folder)) and files_of(path) == whole


def test_an_index_whose_header_claims_a_terabyte_is_not_allocated(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, _ = pack(tmp_path / "packs", folder)
    whole = files_of(path)
    index = np.load(path / "index.npy")
    with open(path / "index.npy", "wb") as f:  # the same numbers, under a header that says there are 2**40 of them
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (3, 2**40)})
        f.write(index.tobytes())
    capsys.readouterr()
    again, _ = pack(tmp_path / "packs", folder)
    err = warnings_of(capsys.readouterr().err)
    assert str(path) in err and err.endswith("packing again") and len(err.splitlines()) == 1, err
    assert again == path and files_of(path) == whole


PROGRESS_NONSENSE = {
    "a chunk past the end": {"chunk": 10**6},
    "a row of another chunk": {"bad": [40]},
    "checksums of another count": {"crcs": [1, 2]},
    "a checksum that is text": {"crcs": ["x", 0, 0, 0]},
}


@pytest.mark.parametrize("damage", list(PROGRESS_NONSENSE))
def test_a_progress_line_that_makes_no_sense_is_packed_again(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    reference, _ = pack(tmp_path / "reference", folder)
    monkeypatch.setattr(packs, "CHUNK", 4)
    count_decodes(monkeypatch, stop_at=6)  # Ctrl-C in the second chunk: the first is packed and recorded
    with pytest.raises(KeyboardInterrupt):
        pack(tmp_path / "packs", folder)
    path, _ = pack_folder(tmp_path / "packs", folder / "train", samples_of(folder), 3, 24)
    lines = (path / "progress.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the header and chunk 0
    entry = {**json.loads(lines[1]), **PROGRESS_NONSENSE[damage]}
    (path / "progress.jsonl").write_text("\n".join([lines[0], json.dumps(entry)]) + "\n")
    decodes = count_decodes(monkeypatch)
    again, meta = pack(tmp_path / "packs", folder)
    assert again == path and meta is not None and decodes.calls == len(samples_of(folder))  # chunk 0 again too
    assert files_of(path) == files_of(reference)  # as packed in one go


def test_a_decode_cache_naming_files_that_are_not_unreadable_ones_is_decoded_again(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = DataConfig(data=str(folder), data_root=str(tmp_path / "data"), image_size=67, workers=0, loader="memory")
    first = load_data(config, CPU)
    (cache,) = [path for path in (tmp_path / "data" / "cache").glob("*.pt") if "-train-" in path.name]
    saved = torch.load(cache, weights_only=True)
    assert [Path(name).name for name in saved["bad"]] == ["empty.png"]
    for bad in ([*saved["bad"], 5], [*saved["bad"], "/etc/passwd"], saved["bad"] * 2):
        torch.save({**saved, "bad": bad}, cache)  # the same images are readable: only the list is wrong
        capsys.readouterr()
        again = load_data(config, CPU)
        err = capsys.readouterr().err
        assert f"warning: the decode cache {cache} does not fit its folder" in err and "passwd" not in err, err
        assert torch.equal(again.train.images, first.train.images)


class KillsItsWorker:
    """packs.decode_for_store, but a DataLoader worker that starts on `file` kills itself with SIGKILL (as the
    kernel's out-of-memory killer does), after a pause in which what it made before reaches the main process."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def __call__(self, path: Path, channels: int, size: int) -> torch.Tensor:
        if path == self.file and torch.utils.data.get_worker_info() is not None:
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        return folders.decode_for_store(path, channels, size)


@pytest.mark.slow
def test_a_killed_packing_worker_is_one_data_error_and_the_pack_resumes(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _ = pack(tmp_path / "reference", folder)
    monkeypatch.setattr(packs, "CHUNK", 4)
    samples = samples_of(folder)
    monkeypatch.setattr(packs, "decode_for_store", KillsItsWorker(samples[5][0]))  # in the second chunk
    with pytest.raises(DataError) as died:
        build_pack(tmp_path / "packs", folder / "train", samples, 3, 24, 1)
    assert died.value.setting == "workers" and "\n" not in str(died.value)
    assert str(died.value).startswith("a data-loading worker died (signal 9, perhaps out of memory) at 4/13 images; ")
    assert str(died.value).endswith(
        "the same command resumes packing where it stopped (fewer workers need less memory)"
    )
    decodes = count_decodes(monkeypatch)
    again, _ = pack(tmp_path / "packs", folder)
    assert decodes.calls == len(samples) - 4  # the first chunk was kept
    assert files_of(again) == files_of(reference)  # as packed in one go


# --- Stale temporary files ------------------------------------------------------------------------------------


def dead_pid() -> int:
    """The id of a process that has ended (and was reaped): no process has it now."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_temporary_files_of_killed_cache_writes_are_removed_when_the_cache_is_next_opened(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    killed = cache / f"f-train-0123abcd-30px-3ch-0123456789abcdef.pt.{dead_pid()}.tmp"  # its writer is gone
    killed.write_bytes(b"\0" * 4096)
    age(killed, 120)
    just_killed = cache / f"f-train-0123abcd-30px-3ch-0123456789abcdef.pt.{dead_pid()}.tmp"  # (or on another
    just_killed.write_bytes(b"\0" * 4096)  # machine, writing now: it waits for a minute untouched)
    forgotten = cache / "f-val-0123abcd-30px-3ch-0123456789abcdef.pt.1.tmp"  # its writer lives, but it has not
    forgotten.write_bytes(b"\0" * 4096)  # touched the file for 2 hours
    age(forgotten, 2 * 3600)
    writing = cache / f"f-val-0123abcd-30px-3ch-fedcba9876543210.pt.{os.getpid()}.tmp"  # a write under way
    writing.write_bytes(b"\0" * 4096)
    other = cache / "notes.tmp.txt"
    other.write_text("not ours")
    config = DataConfig(data=str(folder), cache_dir=str(cache), image_size=67, workers=0, loader="memory")
    capsys.readouterr()
    load_data(config, CPU)
    assert not killed.exists() and not forgotten.exists()
    assert writing.exists() and just_killed.exists() and other.exists()
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: removed")]
    assert len(notes) == 1 and notes[0].startswith("note: removed 2 temporary file(s)") and str(cache) in notes[0]


def test_temporary_files_of_a_killed_packer_are_removed_when_the_pack_is_next_opened(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packs, "CHUNK", 4)
    count_decodes(monkeypatch, stop_at=6)
    with pytest.raises(KeyboardInterrupt):
        pack(tmp_path / "packs", folder)
    path, _ = pack_folder(tmp_path / "packs", folder / "train", samples_of(folder), 3, 24)
    left = [path / f"index.npy.{dead_pid()}.tmp", path / f"pack.json.{dead_pid()}.tmp"]
    for tmp in left:
        tmp.write_bytes(b"half of it")
        age(tmp, 120)
    monkeypatch.setattr(packs, "decode_for_store", folders.decode_for_store)
    again, meta = pack(tmp_path / "packs", folder)
    assert again == path and meta is not None
    assert not [tmp for tmp in path.iterdir() if tmp.suffix == ".tmp"]


# --- --verify-pack ----------------------------------------------------------------------------------------------


def repaint(path: Path, colour: tuple[int, int, int]) -> None:
    """Another picture in the file, of the same length and with the same modification time."""
    before = path.stat()
    with Image.open(path) as image:
        size = image.size
    Image.new("RGB", size, colour).save(path, compress_level=0)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("loader", ["packed", "memory"])
def test_verify_pack_finds_an_image_changed_behind_the_same_size_and_time(
    tmp_path: Path, capsys: pytest.CaptureFixture, loader: str
) -> None:
    root = write_folder(tmp_path / "f")
    options = dict(data=str(root), data_root=str(tmp_path / "data"), image_size=67, workers=0, loader=loader)
    kind = Packed if loader == "packed" else InMemory
    first = load_data(DataConfig(**options), CPU)
    assert type(first.train) is kind
    changed = root / "train" / "b" / "1.png"
    row = [path for path, _ in samples_of(root)].index(changed) - 1  # (the unreadable file is row 0)
    repaint(changed, (0, 255, 0))
    capsys.readouterr()
    # The freshness check sees the names, sizes and times only: the old pixels are used.
    stale = load_data(DataConfig(**options), CPU)
    assert "Packing" not in capsys.readouterr().out
    old, _ = stale.train.take([row])
    assert torch.equal(old, first.train.take([row])[0]) and old[0, 1].float().mean() < 200
    # --verify-pack reads the files: the change is found, named, and the pack (or the cache) made again.
    verified = load_data(DataConfig(verify_pack=True, **options), CPU)
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "changed" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "contents" in warnings[0], captured.err
    new, _ = verified.train.take([row])
    assert new[0, 1].float().mean() > 250 and new[0, 0].float().mean() < 5  # the green picture
    # Once made again, it verifies.
    load_data(DataConfig(verify_pack=True, **options), CPU)
    captured = capsys.readouterr()
    assert "changed" not in captured.err and "Packing" not in captured.out and "Decoding" not in captured.out


def test_verify_pack_packs_again_the_chunks_of_a_half_pack_whose_files_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_folder(tmp_path / "f")
    monkeypatch.setattr(packs, "CHUNK", 4)
    count_decodes(monkeypatch, stop_at=6)  # Ctrl-C in the second chunk: the first is packed and recorded
    with pytest.raises(KeyboardInterrupt):
        pack(tmp_path / "packs", root)
    repaint(samples_of(root)[2][0], (0, 255, 0))  # in the first chunk
    reference, _ = pack(tmp_path / "reference", root)
    decodes = count_decodes(monkeypatch)
    again, meta = pack(tmp_path / "packs", root, verify=True)
    assert decodes.calls == len(samples_of(root))  # the first chunk too
    assert files_of(again) == files_of(reference)


def test_train_py_has_a_verify_pack_flag_for_the_loading() -> None:
    assert command_line_settings(["--verify-pack"]).data.verify_pack is True
    assert command_line_settings([]).data.verify_pack is False


# --- A resumed run's saved settings ---------------------------------------------------------------------------


def edited_run(one_epoch_run: Path, work: Path, change: Callable[[dict], object]) -> Path:
    """A copy of a real run whose last.pt's saved settings ("args") were changed, and saved with its checksum made
    again: what is left to find the change is the check for sense."""
    run_dir = copy_run(one_epoch_run, work, "edited")
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    checkpoint.pop("checksum")
    checkpoint["args"] = change(dict(checkpoint["args"]))
    save_checkpoint(checkpoint, run_dir / "last.pt")
    return run_dir


def setting(key: str, value: object) -> Callable[[dict], dict]:
    return lambda args: {**args, key: value}


SAVED_NONSENSE = {
    "batch 0": (setting("batch_size", 0), "saved setting batch_size = 0 ", "--batch-size"),
    "lr nan": (setting("lr", float("nan")), "saved setting lr = nan ", "--lr"),
    "image size 5": (setting("image_size", 5), "saved setting image_size = 5 ", "--image-size"),
    "negative workers of the data": (setting("max_bad_files", -3), "saved setting max_bad_files = -3 ", None),
    "a model that does not exist": (setting("model", "resnet"), "saved setting model = 'resnet' ", "--model"),
    "a step as text": (setting("lr_step", "6"), "saved setting lr_step = '6' ", "--lr-step"),
    "lr as a truth value": (setting("lr", True), "saved setting lr = True ", "--lr"),
    "batch as a float": (setting("batch_size", 16.0), "saved setting batch_size = 16.0 ", "--batch-size"),
    "a tensor": (setting("momentum", torch.zeros(3)), "saved setting momentum = ", "--momentum"),
    "not a table": (lambda args: list(args), 'saved settings ("args") are a list', None),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SAVED_NONSENSE))
def test_a_saved_setting_that_would_be_refused_on_the_command_line_is_refused_on_resume(
    one_epoch_run: Path, tmp_path: Path, case: str
) -> None:
    change, named, flag = SAVED_NONSENSE[case]
    run_dir = edited_run(one_epoch_run, tmp_path, change)
    with pytest.raises(SystemExit) as refused:
        get_settings(["--resume", str(run_dir), "--epochs", "2"])
    line = str(refused.value.code)
    assert line.startswith(f"error: {run_dir / 'last.pt'}: {named}"), line
    assert "\n" not in line and (flag is None or f"give {flag} " in line), line


@pytest.mark.slow
def test_a_saved_setting_given_again_on_the_command_line_is_replaced_and_unknown_ones_are_noted(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = edited_run(one_epoch_run, tmp_path, lambda args: {**args, "batch_size": 0, "\x1b[31mgone": 1})
    args, resume, _ = get_settings(["--resume", str(run_dir), "--epochs", "2", "--batch-size", "16"])
    assert args.data.batch_size == 16 and resume["epoch"] == 1
    notes = capsys.readouterr().out.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith(f"note: {run_dir / 'last.pt'}: ") and "\x1b" not in notes[0]
    assert "\\x1b[31mgone" in notes[0] and "ignored" in notes[0]


@pytest.mark.slow
def test_train_py_refuses_a_resumed_batch_of_0_in_one_line_and_writes_nothing(
    one_epoch_run: Path, tmp_path: Path
) -> None:
    run_dir = edited_run(one_epoch_run, tmp_path, setting("batch_size", 0))
    before = {path.name: path.stat().st_mtime_ns for path in run_dir.iterdir()}
    result = run("train.py", "--resume", "runs/edited", "--epochs", "2", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {Path('runs/edited/last.pt')}: saved setting batch_size = 0 "), line
    assert {path.name: path.stat().st_mtime_ns for path in run_dir.iterdir()} == before


# --- A killed data-loading worker -------------------------------------------------------------------------------

# train.py, with a DataLoader worker that kills itself with SIGKILL (as the kernel's out-of-memory killer does)
# when it starts to decode its Nth training image (with KILL_IN=val in the environment: validation image):
# argv = the repository, N, then train.py's arguments.
KILLER = """import os, runpy, signal, sys, time
sys.path.insert(0, sys.argv[1])
import torch.utils.data
import folders
decode, decoded, kill_at = folders.FolderFiles.__getitem__, [0], int(sys.argv[2])
training = os.environ.get("KILL_IN", "train") == "train"
def getitem(self, index):
    if self.fill == training and torch.utils.data.get_worker_info() is not None:  # a training (validation) worker
        decoded[0] += 1
        if decoded[0] == kill_at:
            time.sleep(0.5)  # the batches it made before reach the main process
            os.kill(os.getpid(), signal.SIGKILL)
    return decode(self, index)
folders.FolderFiles.__getitem__ = getitem
script = os.path.join(sys.argv[1], "train.py")
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_a_killed_data_loading_worker_is_one_line_and_a_checkpoint_that_resumes_exactly(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", train_count=8, val_count=2, side=40)
    (root / "train" / "a" / "empty.png").unlink()
    # 16 training images in batches of 4, one worker: 4 steps an epoch; the worker dies in epoch 2's third batch.
    flags = ["--data", "f", "--loader", "stream", "--workers", "1", "--batch-size", "4", "--image-size", "67",
             "--epochs", "2", "--log-interval", "1", "--no-plots", "--amp", "off", "--device", "cpu"]  # fmt: skip
    run("train.py", *flags, "--name", "straight", cwd=tmp_path)
    (tmp_path / "killer.py").write_text(KILLER)
    killed = subprocess.run(
        [sys.executable, "killer.py", str(ROOT), str(16 + 9), *flags, "--name", "killed"],
        cwd=tmp_path, env=SCRIPT_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == 1 and "Traceback" not in killed.stderr, killed.stderr
    (line,) = killed.stderr.strip().splitlines()
    checkpoint = torch.load(tmp_path / "runs" / "killed" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and 0 <= checkpoint["partial"]["batch"] <= 2, checkpoint["partial"]
    last = Path("runs/killed/last.pt")
    assert line == (
        "error: a data-loading worker died (signal 9, perhaps out of memory); "
        f"{last} holds the run up to epoch 2, step {checkpoint['partial']['batch']}; go on with --resume runs/killed"
    ), line
    run("train.py", "--resume", "runs/killed", "--workers", "1", cwd=tmp_path)
    rows = {}
    for name in ("straight", "killed"):
        lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
        rows[name] = [{k: v for k, v in json.loads(row).items() if not k.endswith(("seconds", "per_second"))}
                      for row in lines]  # fmt: skip
    assert rows["killed"] == rows["straight"] and len(rows["straight"]) == 2
    weights = {name: torch.load(tmp_path / "runs" / name / "last.pt", weights_only=True)["model"] for name in rows}
    assert all(torch.equal(weights["killed"][key], weights["straight"][key]) for key in weights["straight"])
    for path in tmp_path.rglob("*.pt"):  # hundreds of MB
        path.unlink()


@pytest.mark.slow
def test_a_data_loading_worker_killed_during_validation_is_one_line_naming_the_last_checkpoint(tmp_path: Path) -> None:
    (write_folder(tmp_path / "f", train_count=4, val_count=2, side=40) / "train" / "a" / "empty.png").unlink()
    # 8 training images in batches of 4, 4 validation images: the worker dies at the first of epoch 2's validation.
    flags = ["--data", "f", "--loader", "stream", "--workers", "1", "--batch-size", "4", "--image-size", "67",
             "--epochs", "2", "--no-plots", "--amp", "off", "--device", "cpu", "--name", "killed"]  # fmt: skip
    (tmp_path / "killer.py").write_text(KILLER)
    killed = subprocess.run(
        [sys.executable, "killer.py", str(ROOT), str(4 + 1), *flags],
        cwd=tmp_path, env={**SCRIPT_ENV, "KILL_IN": "val"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == 1 and "Traceback" not in killed.stderr, killed.stderr
    (line,) = killed.stderr.strip().splitlines()
    assert line == (
        "error: a data-loading worker died (signal 9, perhaps out of memory) while validating epoch 2; "
        f"{Path('runs/killed/last.pt')} holds the run up to epoch 1; go on with --resume {Path('runs/killed')}"
    ), line
    checkpoint = torch.load(tmp_path / "runs" / "killed" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["partial"] is None
    (tmp_path / "runs" / "killed" / "last.pt").unlink()  # hundreds of MB
    (tmp_path / "runs" / "killed" / "best.pt").unlink()
