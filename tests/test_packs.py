"""Packed copies of image folders (packs.py) and the packed loader (data_pipeline.Packed): the same
pixels as decode_for_store, the same batches as in memory, resuming, invalidation, damaged packs,
full disks; train.py and bench.py with packs; and the channels_last paths of presets.py."""

import dataclasses
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from helpers import run
from PIL import Image, JpegImagePlugin

import packs
import train
from data_pipeline import DataConfig, InMemory, Packed, load_data
from errors import DataError
from folders import decode_for_store, folder_samples
from packs import PackedFiles, build_pack, pack_folder, read_pack
from presets import crops_on_cpu, normalize
from run_files import Setup
from train_settings import command_line_settings

CPU = torch.device("cpu")
CLASSES = ["a", "b"]
# Shorter sides below, at and above the packs' 24 px, and both orientations.
SIZES = [(40, 30), (30, 44), (24, 24), (52, 28), (20, 16)]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # each channel its own factors


def write_folder(root: Path, train: int = 34, val: int = 5, seed: int = 0, unreadable: bool = True) -> Path:
    """An ImageNet-layout folder of small JPEGs and PNGs of varied sizes (one grayscale, one RGBA), plus
    two `unreadable` files: an empty JPEG first in train/a/ and a truncated one first in val/b/."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = SIZES[(i + label) % len(SIZES)]
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if i == 2:
                    image = image.convert("L")
                elif i == 3:
                    image = image.convert("RGBA")
                image.save(folder / f"img{i:02d}.{'png' if i % 2 or i == 3 else 'jpg'}")
    if not unreadable:
        return root
    (root / "train" / "a" / "bad_empty.jpg").write_bytes(b"")
    whole = (root / "train" / "b" / "img00.jpg").read_bytes()
    (root / "val" / "b" / "bad_cut.jpg").write_bytes(whole[: len(whole) // 2])
    return root


def samples_of(root: Path, split: str) -> list:
    samples, hidden, other, _ = folder_samples(root / split, CLASSES)
    assert not hidden and not other
    return samples


def bad_rows(samples: list) -> list[int]:
    return [row for row, (path, _) in enumerate(samples) if path.name.startswith("bad")]


def contents(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """A finished pack as files on disk: images (N, R, R, C), index (3, M), pack.json."""
    meta = json.loads((path / "pack.json").read_text())
    shape = (meta["count"], meta["size"], meta["size"], meta["channels"])
    images = np.fromfile(path / "images.u8", dtype=np.uint8).reshape(shape)
    return images, np.load(path / "index.npy"), meta


def files_of(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(path.iterdir())}


def assert_same_pack(path: Path, reference: Path) -> None:
    """Byte for byte the pack built in one go: data file, index.npy, pack.json, and nothing else."""
    files, expected = files_of(path), files_of(reference)
    assert sorted(files) == sorted(expected) == sorted([packs.DATA_FILES[FORMAT[path]], "index.npy", "pack.json"])
    for name in expected:
        assert files[name] == expected[name], name


class Decodes:
    """packs.decode_for_store, counted; raises KeyboardInterrupt (Ctrl-C) at call `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls, self.stop_at = 0, stop_at

    def __call__(self, path: Path, channels: int, size: int) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return decode_for_store(path, channels, size)


def count_decodes(monkeypatch: pytest.MonkeyPatch, stop_at: int | None = None) -> Decodes:
    decodes = Decodes(stop_at)
    monkeypatch.setattr(packs, "decode_for_store", decodes)
    return decodes


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """69 training images (one unreadable) and 11 validation images (one unreadable), never modified."""
    return write_folder(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture
def chunk4(monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of 4 images: many chunks from a few dozen images (packs reads CHUNK when it runs)."""
    monkeypatch.setattr(packs, "CHUNK", 4)
    return 4


FORMAT = {}  # pack folder -> its format, for assert_same_pack


def pack(pack_dir: Path, root: Path, samples: list, fmt: str, split: str = "train") -> tuple[Path, dict]:
    """build_pack at 24 px in colour, without workers; the raw default is called as before the formats came."""
    path, meta = build_pack(pack_dir, root / split, samples, 3, 24, 0, **({} if fmt == "raw" else {"fmt": fmt}))
    FORMAT[path] = fmt
    return path, meta


@pytest.fixture(scope="module")
def reference_packs(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The training split of `photos` packed at 24 px in one go (default chunks, no workers), in each format."""
    samples = samples_of(photos, "train")
    folder = tmp_path_factory.mktemp("reference")
    return {fmt: pack(folder, photos, samples, fmt)[0] for fmt in ("raw", "jpeg")}


FORMATS = ["raw", "jpeg"]


def stop_packing(
    pack_dir: Path, root: Path, samples: list, monkeypatch: pytest.MonkeyPatch, stop_at: int, fmt: str = "raw"
) -> Path:
    """Start packing the training split at 24 px and press Ctrl-C at the `stop_at`-th decode -> the half-pack."""
    decodes = count_decodes(monkeypatch, stop_at)
    with pytest.raises(KeyboardInterrupt):
        pack(pack_dir, root, samples, fmt)
    assert decodes.calls == stop_at
    path, key = pack_folder(pack_dir, root / "train", samples, 3, 24, *([] if fmt == "raw" else [fmt]))
    FORMAT[path] = fmt
    assert not (path / "pack.json").exists()
    assert read_pack(path, key) is None  # a half-pack is never complete
    return path


def progress_chunks(path: Path) -> list[int]:
    return [json.loads(line)["chunk"] for line in (path / "progress.jsonl").read_text().splitlines()[1:]]


# --- What a pack holds -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers, chunk", [(0, 4), (2, 64)])  # 69 files: 18 chunks, or 2 over 2 processes
def test_a_pack_holds_every_file_decoded_for_store_with_its_label_and_skips_unreadable_ones(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, workers, chunk
) -> None:
    monkeypatch.setattr(packs, "CHUNK", chunk)
    samples = samples_of(photos, "train")
    assert len(samples) > packs.CHUNK
    path, meta = build_pack(tmp_path / "packs", photos / "train", samples, 3, 24, workers)
    assert path.parent == tmp_path / "packs"
    bad = bad_rows(samples)
    assert bad == [0]
    assert meta["bad"] == [str(samples[0][0])]
    assert "Packing 69 images" in capsys.readouterr().out
    images, (rows, labels, crcs), on_disk = contents(path)
    assert on_disk["count"] == len(samples) and on_disk["size"] == 24 and on_disk["channels"] == 3
    assert on_disk["bad"] == meta["bad"]
    assert rows.tolist() == list(range(1, len(samples)))
    assert labels.tolist() == [samples[row][1] for row in rows]
    assert 0 < labels.sum() < len(labels)  # both classes
    assert not images[0].any()  # the unreadable file's row stays zero
    for row in rows:
        expected = decode_for_store(samples[row][0], 3, 24).permute(1, 2, 0).numpy()
        assert np.array_equal(images[row], expected), samples[row][0]
    assert crcs.tolist() == [zlib.crc32(images[row].tobytes()) for row in rows]  # of the bytes on disk
    assert not (path / "progress.jsonl").exists()
    # The reader: a batch of any rows, as (B, C, R, R) channels_last uint8, with its labels.
    files = PackedFiles(path, meta)
    assert len(files) == len(samples) - 1
    picks = torch.tensor([5, 0, len(files) - 1, 5])
    batch, batch_labels = files.gather(picks)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 24, 24)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    for image, label, pick in zip(batch, batch_labels.tolist(), picks.tolist()):
        file, expected_label = samples[rows[pick]]
        assert torch.equal(image, decode_for_store(file, 3, 24)) and label == expected_label


def test_a_grayscale_pack_has_one_channel(photos: Path, tmp_path: Path) -> None:
    samples = samples_of(photos, "val")
    path, meta = build_pack(tmp_path / "packs", photos / "val", samples, 1, 16, 0)
    images, (rows, *_), _ = contents(path)
    assert images.shape == (len(samples), 16, 16, 1)
    assert meta["bad"] == [str(samples[row][0]) for row in bad_rows(samples)] and len(meta["bad"]) == 1
    for row in rows:
        assert np.array_equal(images[row], decode_for_store(samples[row][0], 1, 16).permute(1, 2, 0).numpy())


def test_a_jpeg_pack_holds_each_stored_image_as_one_jpeg_file(photos: Path, tmp_path: Path) -> None:
    samples = samples_of(photos, "val")
    path, meta = pack(tmp_path / "packs", photos, samples, "jpeg", split="val")
    assert path.name.endswith("-jpeg") and meta["bad"] == [str(samples[row][0]) for row in bad_rows(samples)]
    files = PackedFiles(path, meta)
    assert files.rows.tolist() == [row for row in range(len(samples)) if row not in bad_rows(samples)]
    images, labels = files.gather(torch.arange(len(files)))
    assert images.is_contiguous(memory_format=torch.channels_last) and images.shape == (len(files), 3, 24, 24)
    for image, label, row in zip(images, labels.tolist(), files.rows.tolist()):
        stored = decode_for_store(samples[row][0], 3, 24)
        with Image.open(io.BytesIO(packs.encode_jpeg(stored))) as jpeg:  # what the pack's JPEG decodes to
            assert torch.equal(image, torch.from_numpy(np.array(jpeg.convert("RGB"))).permute(2, 0, 1))
        assert label == samples[row][1]


def test_a_jpeg_pack_keeps_colour_at_full_resolution() -> None:
    """4:4:4, no chroma subsampling: nvJPEG on the GPU then decodes Pillow's pixels (docs/packed-copies.md)."""
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with Image.open(io.BytesIO(packs.encode_jpeg(image))) as jpeg:
        assert JpegImagePlugin.get_sampling(jpeg) == 0  # Pillow's code for 4:4:4 (4:2:0 is 2)


def test_a_complete_pack_is_read_not_packed_again(photos: Path, tmp_path: Path, monkeypatch) -> None:
    samples = samples_of(photos, "val")
    first, meta = build_pack(tmp_path / "packs", photos / "val", samples, 3, 24, 0)
    decodes = count_decodes(monkeypatch)
    again, meta_again = build_pack(tmp_path / "packs", photos / "val", samples, 3, 24, 0)
    assert decodes.calls == 0 and again == first
    assert np.array_equal(meta_again["rows"], meta["rows"]) and meta_again["key"] == meta["key"]


# --- The same batches as in memory -----------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_and_packed(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """load_data on `photos` in memory and packed (data_root in a temporary folder)."""
    work = tmp_path_factory.mktemp("loaded")
    common = dict(data=str(photos), data_root=str(work / "data"), image_size=67, workers=0, batch_size=5)
    memory = load_data(DataConfig(loader="memory", **common), CPU)
    packed = load_data(DataConfig(loader="packed", **common), CPU)
    return memory, packed, work


def test_the_packed_loader_loads_what_memory_loads(memory_and_packed: tuple) -> None:
    memory, packed, work = memory_and_packed
    assert type(memory.train) is InMemory and type(packed.train) is Packed and type(packed.val) is Packed
    assert sorted(p.parent for p in (work / "data" / "packs").glob("*/pack.json")) == sorted(
        [packed.train.files.path, packed.val.files.path]
    )
    assert packed.classes == memory.classes == CLASSES
    assert (len(packed.train), len(packed.val)) == (len(memory.train), len(memory.val)) == (68, 10)
    assert packed.preprocess.image_size == memory.preprocess.image_size
    assert packed.preprocess.mean == pytest.approx(memory.preprocess.mean, abs=1e-9)
    assert packed.preprocess.std == pytest.approx(memory.preprocess.std, abs=1e-9)
    same = {"mean": memory.augment.mean, "std": memory.augment.std}  # measured: compared above
    assert dataclasses.replace(packed.augment, **same) == memory.augment


def order(batches) -> list[int]:
    """The labels of an epoch's batches, in order."""
    return torch.cat([labels for _, labels in batches]).tolist()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("rank, world_size", [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("split", ["train", "val"])
def test_packed_batches_are_the_in_memory_batches(memory_and_packed: tuple, split, rank, world_size, workers) -> None:
    memory, packed, _ = memory_and_packed
    train = split == "train"
    stored = getattr(memory, split)
    in_memory = InMemory(stored.images, stored.labels, 3, train, CPU, rank, world_size)
    from_pack = Packed(getattr(packed, split).files, 3, train, workers, CPU, rank, world_size)
    assert from_pack.num_batches() == in_memory.num_batches() >= 2
    for seed in (0, 1, 7):
        for start in (0, 1, in_memory.num_batches() - 1):
            expected = list(in_memory.batches(seed, start))
            got = list(from_pack.batches(seed, start))
            assert len(got) == len(expected) == in_memory.num_batches() - start
            for (images, labels), (expected_images, expected_labels) in zip(got, expected):
                assert images.dtype == torch.uint8 and images.device == CPU
                assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    if train and world_size == 1:  # shuffled: another seed, another order
        assert order(from_pack.batches(1)) != order(from_pack.batches(0))


def test_an_abandoned_epoch_stops_its_gathering_threads(memory_and_packed: tuple) -> None:
    _, packed, _ = memory_and_packed
    loader = Packed(packed.train.files, 5, True, 2, CPU)
    batches = loader.batches(seed=3)
    next(batches)
    batches.close()  # train.py's --max-steps: the epoch ends early
    assert order(loader.batches(seed=3)) == order(loader.batches(seed=3))


# --- Resuming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_packing_stopped_by_ctrl_c_resumes_where_it_stopped(
    photos: Path, tmp_path: Path, reference_packs: dict, chunk4: int, monkeypatch, capsys, fmt: str
) -> None:
    samples = samples_of(photos, "train")
    # Chunks 0 and 1 finish (decodes 1-8, the empty file among them); Ctrl-C in chunk 2.
    path = stop_packing(tmp_path / "packs", photos, samples, monkeypatch, stop_at=10, fmt=fmt)
    assert "Packing stopped at 8/69 images; the same command resumes it." in capsys.readouterr().out
    assert progress_chunks(path) == [0, 1]
    decodes = count_decodes(monkeypatch)
    path_again, meta = pack(tmp_path / "packs", photos, samples, fmt)
    assert "resuming after 2 chunks" in capsys.readouterr().out
    assert path_again == path and decodes.calls == len(samples) - 8  # only the chunks not yet done
    assert meta["bad"] == [str(samples[0][0])]  # found before Ctrl-C, still reported
    assert_same_pack(path, reference_packs[fmt])


def test_jpeg_bytes_of_a_chunk_that_was_not_recorded_are_cut_off(
    photos: Path, tmp_path: Path, reference_packs: dict, chunk4: int, monkeypatch
) -> None:
    """A crash after a chunk's JPEGs were appended to images.jpg, before its progress line: they go."""
    samples = samples_of(photos, "train")
    path = stop_packing(tmp_path / "packs", photos, samples, monkeypatch, stop_at=10, fmt="jpeg")
    with open(path / "images.jpg", "ab") as f:
        f.write(b"\xff\xd8 half of an unrecorded chunk")
    decodes = count_decodes(monkeypatch)
    pack(tmp_path / "packs", photos, samples, "jpeg")
    assert decodes.calls == len(samples) - 8
    assert_same_pack(path, reference_packs["jpeg"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_chunk_whose_progress_line_was_cut_short_is_packed_again(
    photos: Path, tmp_path: Path, reference_packs: dict, chunk4: int, monkeypatch, fmt: str
) -> None:
    samples = samples_of(photos, "train")
    path = stop_packing(tmp_path / "packs", photos, samples, monkeypatch, stop_at=14, fmt=fmt)  # chunks 0-2 done
    progress = path / "progress.jsonl"
    text = progress.read_text()
    assert progress_chunks(path) == [0, 1, 2]
    progress.write_text(text[: text.rindex('"bad"')])  # a crash while writing chunk 2's line
    decodes = count_decodes(monkeypatch)
    pack(tmp_path / "packs", photos, samples, fmt)
    assert decodes.calls == len(samples) - 8  # chunk 2 again, then the rest
    assert_same_pack(path, reference_packs[fmt])


def test_chunks_packed_after_a_cut_progress_line_are_not_lost(
    photos: Path, tmp_path: Path, reference_packs: dict, chunk4: int, monkeypatch
) -> None:
    samples = samples_of(photos, "train")
    path = stop_packing(tmp_path / "packs", photos, samples, monkeypatch, stop_at=14)  # chunks 0-2 done
    text = (path / "progress.jsonl").read_text()
    (path / "progress.jsonl").write_text(text[: text.rindex('"bad"')])  # chunk 2's line cut short
    # Resumed: chunks 2 and 3 finish (decodes 1-8), then Ctrl-C again in chunk 4.
    with pytest.raises(KeyboardInterrupt):
        count_decodes(monkeypatch, stop_at=10)
        pack(tmp_path / "packs", photos, samples, "raw")
    decodes = count_decodes(monkeypatch)
    pack(tmp_path / "packs", photos, samples, "raw")
    assert_same_pack(path, reference_packs["raw"])
    assert decodes.calls == len(samples) - 16  # chunks 0-3 were done


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("leftover", ["progress of other files", "progress of another version", "images cut short"])
def test_a_half_pack_that_does_not_fit_is_packed_from_scratch(
    photos: Path, tmp_path: Path, reference_packs: dict, chunk4: int, monkeypatch, leftover: str, fmt: str
) -> None:
    samples = samples_of(photos, "train")
    path = stop_packing(tmp_path / "packs", photos, samples, monkeypatch, stop_at=14, fmt=fmt)
    images = path / packs.DATA_FILES[fmt]
    lines = (path / "progress.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    if leftover == "images cut short":
        with open(images, "r+b") as f:
            f.truncate(100)
    else:
        # Every chunk marked done, over images that are all 0xFF: nothing of it may be kept.
        header = {**header, "key": "0" * 16} if leftover == "progress of other files" else {**header, "version": 0}
        entry = {"bad": []} if fmt == "raw" else {"bad": [], "start": 0, "lengths": [10] * 4}
        chunks = [json.dumps({"chunk": chunk, **entry}) for chunk in range(-(-len(samples) // 4))]
        (path / "progress.jsonl").write_text("\n".join([json.dumps(header), *chunks]) + "\n")
        images.write_bytes(b"\xff" * (len(samples) * 24 * 24 * 3))
    decodes = count_decodes(monkeypatch)
    pack(tmp_path / "packs", photos, samples, fmt)
    assert decodes.calls == len(samples)
    assert_same_pack(path, reference_packs[fmt])


def test_ctrl_c_while_packing_in_train_py_exits_130_and_says_how_to_resume(
    photos: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    settings = command_line_settings(["--data", str(photos), "--loader", "packed", "--pack-dir", str(tmp_path / "p"),
                           "--data-root", str(tmp_path / "data"), "--image-size", "67", "--workers", "0"])  # fmt: skip
    count_decodes(monkeypatch, stop_at=3)
    with pytest.raises(SystemExit) as stopped:
        train.load_data_or_exit(settings.data, Setup(CPU, None, torch.channels_last))
    assert stopped.value.code == 130
    assert "Packing stopped at 0/69 images; the same command resumes it." in capsys.readouterr().out
    assert list((tmp_path / "p").glob("*/progress.jsonl")) and not list((tmp_path / "p").glob("*/pack.json"))


# --- Invalidation and the automatic choice --------------------------------------------------------------


def test_a_read_only_data_root_packs_under_the_working_directory_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """ImageNet on read-only shared storage (as root every folder can be written: the operating system's answer
    is stood in for): the packs go to data/packs under the working directory, as the decode cache does."""
    import data_pipeline

    root = write_folder(tmp_path / "d", train=3, val=2)
    shared = tmp_path / "shared"
    shared.mkdir()
    real_access = data_pipeline.os.access
    monkeypatch.setattr(data_pipeline.os, "access", lambda path, mode: Path(path) != shared and real_access(path, mode))
    monkeypatch.chdir(tmp_path)
    config = DataConfig(data=str(root), data_root=str(shared), loader="packed", image_size=67, workers=0, batch_size=4)
    assert type(load_data(config, CPU).train) is Packed
    note = f"note: {shared} cannot be written (read-only data?): the packs go to {Path('data/packs')}/ instead"
    assert note + " (--pack-dir chooses another)" in capsys.readouterr().out
    assert len(list((tmp_path / "data" / "packs").glob("*/pack.json"))) == 2 and not list(shared.iterdir())


def test_a_changed_file_is_packed_again_and_auto_uses_the_pack_once_it_exists(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    root = write_folder(tmp_path / "d", train=3, val=2)
    # An uncompressed PNG: another picture of the same size later is a file of the same length.
    changed = root / "train" / "b" / "img01.png"
    noise = np.random.default_rng(5).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    Image.fromarray(noise).save(changed, compress_level=0)
    config = dict(data=str(root), data_root=str(tmp_path / "data"), image_size=67, workers=0, batch_size=4)
    assert type(load_data(DataConfig(**config), CPU).train) is InMemory  # small: in memory, no pack made
    assert not (tmp_path / "data" / "packs").exists()
    assert type(load_data(DataConfig(loader="packed", **config), CPU).train) is Packed
    assert capsys.readouterr().out.count("Packing") == 2  # both splits
    decodes = count_decodes(monkeypatch)
    data = load_data(DataConfig(**config), CPU)  # auto
    assert type(data.train) is Packed and type(data.val) is Packed
    assert decodes.calls == 0 and "Packing" not in capsys.readouterr().out
    old_key = json.loads((data.train.files.path / "pack.json").read_text())["key"]

    # Another picture in the file, as long, with a new modification time: the training split is packed again.
    before = changed.stat()
    Image.fromarray(np.full((30, 44, 3), (10, 200, 30), dtype=np.uint8)).save(changed, compress_level=0)
    os.utime(changed, ns=(before.st_mtime_ns + 5 * 10**9, before.st_mtime_ns + 5 * 10**9))
    assert changed.stat().st_size == before.st_size  # only the time tells
    data = load_data(DataConfig(**config), CPU)
    assert type(data.train) is Packed
    out = capsys.readouterr().out
    assert out.count("Packing") == 1 and "/train" in out  # val is untouched
    samples = samples_of(root, "train")
    assert decodes.calls == len(samples)  # all of it, not just the changed file
    files = data.train.files
    assert json.loads((files.path / "pack.json").read_text())["key"] != old_key
    row = [path for path, _ in samples].index(changed)
    position = files.rows.tolist().index(row)
    images, labels = files.gather(torch.tensor([position]))
    size = images.shape[-1]
    assert torch.equal(images[0], decode_for_store(changed, 3, size)) and labels.tolist() == [1]
    assert images[0, 1].float().mean() > 150  # the new, green picture
    packed = [entry for entry in files.path.parent.iterdir() if entry.suffix != ".lock"]  # (the packing locks stay)
    assert len(packed) == 2  # the stale pack was replaced, not kept beside


# --- Damaged packs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        "images cut short",
        "pack.json not JSON",
        "index.npy missing",
        "index.npy not numpy",
        "pack.json null",
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_damaged_pack_is_reported_and_packed_again(
    photos: Path, tmp_path: Path, monkeypatch, capsys, damage: str, fmt: str
) -> None:
    samples = samples_of(photos, "val")
    path, meta = pack(tmp_path / "packs", photos, samples, fmt, split="val")
    whole = files_of(path)
    capsys.readouterr()
    if damage == "images cut short":
        with open(path / packs.DATA_FILES[fmt], "r+b") as f:
            f.truncate(len(whole[packs.DATA_FILES[fmt]]) - 100)
    elif damage == "pack.json not JSON":
        (path / "pack.json").write_bytes(whole["pack.json"][:20])
    elif damage == "pack.json null":
        (path / "pack.json").write_text("null")
    elif damage == "index.npy missing":
        (path / "index.npy").unlink()
    else:
        (path / "index.npy").write_bytes(b"\x00" * 64)
    assert read_pack(path, meta["key"]) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and str(path) in err and "damaged" in err and len(err.splitlines()) == 1
    decodes = count_decodes(monkeypatch)
    path_again, meta_again = pack(tmp_path / "packs", photos, samples, fmt, split="val")
    assert path_again == path and meta_again is not None and decodes.calls == len(samples)
    assert files_of(path) == whole


def test_a_pack_of_other_files_is_stale_silently(photos: Path, tmp_path: Path, capsys) -> None:
    samples = samples_of(photos, "val")
    path, meta = build_pack(tmp_path / "packs", photos / "val", samples, 3, 24, 0)
    capsys.readouterr()
    assert read_pack(path, "0" * 16) is None
    assert read_pack(path, meta["key"]) is not None
    assert capsys.readouterr().err == ""


# A process that holds a pack's lock (as a second train.py packing the same folder would) for `seconds`, having
# first copied a finished pack into place where one is given: argv = lock file, seconds, [pack, destination].
HOLDER = """import shutil, sys, time
from filelock import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    if len(sys.argv) > 3:
        shutil.copytree(sys.argv[3], sys.argv[4])
"""


@pytest.mark.parametrize("holder_packs", [False, True], ids=["holder-stops", "holder-packs"])
def test_a_second_packer_of_the_same_split_waits_then_uses_the_pack(
    photos: Path, tmp_path: Path, reference_packs: dict, monkeypatch, capsys, holder_packs: bool
) -> None:
    samples = samples_of(photos, "train")
    path, _ = pack_folder(tmp_path / "packs", photos / "train", samples, 3, 24)
    path.parent.mkdir()
    copy = [str(reference_packs["raw"]), str(path)] if holder_packs else []
    lock = f"{path}.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock, "1", *copy], stdout=subprocess.PIPE, text=True)
    with holder:
        assert holder.stdout.readline() == "held\n"
        decodes = count_decodes(monkeypatch)
        packed, meta = pack(tmp_path / "packs", photos, samples, "raw")
    assert holder.returncode == 0
    assert f"Waiting for another process that is packing {path}/ (it holds {lock})" in capsys.readouterr().out
    assert packed == path and meta["count"] == len(samples)
    assert decodes.calls == (0 if holder_packs else len(samples))  # the holder's pack is read, not made again
    assert_same_pack(path, reference_packs["raw"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_pack_cut_short_while_in_use_is_one_data_error(photos: Path, tmp_path: Path, fmt: str) -> None:
    samples = samples_of(photos, "train")
    path, meta = pack(tmp_path / "packs", photos, samples, fmt)
    files = PackedFiles(path, meta)
    data = path / ("images.u8" if fmt == "raw" else "images.jpg")
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(DataError, match="shorter than its pack.json") as cut:
        files.gather(torch.arange(len(files)))
    assert cut.value.setting == "pack_dir" and str(path) in str(cut.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_flipped_bytes_in_a_packed_image_are_found_as_it_is_read(photos: Path, tmp_path: Path, fmt: str) -> None:
    samples = samples_of(photos, "train")
    path, meta = pack(tmp_path / "packs", photos, samples, fmt)
    data = path / ("images.u8" if fmt == "raw" else "images.jpg")
    files = PackedFiles(path, meta)
    whole = files.gather(torch.arange(len(files)))[0]
    offset = int(meta["starts"][3] if fmt == "jpeg" else meta["rows"][3] * 24 * 24 * 3) + 5  # inside image 3
    with open(data, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))  # one byte, as a failing disk or a bad copy changes it
    assert torch.equal(files.gather(torch.tensor([0, 2, 4]))[0], whole[[0, 2, 4]])  # the others read as before
    for read in (files.gather, files.gather_encoded) if fmt == "jpeg" else (files.gather,):
        with pytest.raises(DataError, match=r"damaged: the image at byte \d+ is not the one packed") as found:
            read(torch.tensor([0, 3]))
        assert found.value.setting == "pack_dir" and f"delete {path} to pack it again" in str(found.value)


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_a_flipped_label_in_a_packs_index_is_found_and_packed_again(
    photos: Path, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture
) -> None:
    samples = samples_of(photos, "train")
    path, meta = pack(tmp_path / "packs", photos, samples, fmt)
    index = np.load(path / "index.npy")
    index[1, 3] ^= 1  # one image's label, as a failing disk or a bad copy changes a bit: it would train on it
    np.save(path / "index.npy", index)
    capsys.readouterr()
    again, repacked = pack(tmp_path / "packs", photos, samples, fmt)
    assert again == path and np.array_equal(repacked["labels"], meta["labels"])
    assert f"warning: {path / 'index.npy'} is damaged (its checksum differs" in capsys.readouterr().err


# --- Full disks ------------------------------------------------------------------------------------


def test_too_little_free_space_is_refused_before_decoding(photos: Path, tmp_path: Path, monkeypatch) -> None:
    samples = samples_of(photos, "train")
    decodes = count_decodes(monkeypatch)
    real = shutil.disk_usage
    monkeypatch.setattr(packs.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=0, free=10**6))
    with pytest.raises(DataError) as refused:
        build_pack(tmp_path / "packs", photos / "train", samples, 3, 256, 0)  # 69 x 196,608 bytes + the index: 15 MB
    assert refused.value.setting == "pack_dir"
    message = str(refused.value)
    assert "15 MB" in message and "1.0 MB free" in message and str(tmp_path / "packs") in message, message
    assert len(message.splitlines()) == 1
    assert decodes.calls == 0
    # Nothing written: `--loader auto` does not take a pack folder left by a refusal for a pack.
    assert not pack_folder(tmp_path / "packs", photos / "train", samples, 3, 256)[0].exists()
    monkeypatch.setattr(packs.shutil, "disk_usage", real)
    path, meta = build_pack(tmp_path / "packs", photos / "train", samples, 3, 256, 0)
    assert meta is not None and decodes.calls == len(samples)
    assert (path / "images.u8").stat().st_size == len(samples) * 256 * 256 * 3


def test_disk_sizes_are_said_in_gb_or_mb() -> None:
    assert packs.disk_size(252 * 10**9) == "252.0 GB"
    assert packs.disk_size(14 * 10**6) == "14 MB"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_write_that_fails_is_one_data_error_and_the_pack_resumes_after(
    photos: Path, tmp_path: Path, reference_packs: dict, chunk4: int, monkeypatch, code: int
) -> None:
    samples = samples_of(photos, "train")
    real, writes = os.pwrite, []

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        writes.append(offset)
        if len(writes) == 10:  # in chunk 2 (chunk 0 writes 3 images: its first file is unreadable)
            raise OSError(code, os.strerror(code))
        return real(fd, data, offset)

    monkeypatch.setattr(packs.os, "pwrite", pwrite)
    with pytest.raises(DataError) as failed:
        pack(tmp_path / "packs", photos, samples, "raw")
    assert failed.value.setting == "pack_dir"
    message = str(failed.value)
    assert len(message.splitlines()) == 1
    if code == errno.EIO:
        assert "cannot write" in message and "images.u8" in message, message
    else:
        assert "disk" in message and str(tmp_path / "packs") in message, message
    path, key = pack_folder(tmp_path / "packs", photos / "train", samples, 3, 24)
    assert read_pack(path, key) is None and progress_chunks(path) == [0, 1]
    monkeypatch.setattr(packs.os, "pwrite", real)
    decodes = count_decodes(monkeypatch)
    pack(tmp_path / "packs", photos, samples, "raw")
    assert decodes.calls == len(samples) - 8
    assert_same_pack(path, reference_packs["raw"])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_full_disk_while_finishing_or_recording_is_one_data_error(
    photos: Path, tmp_path: Path, reference_packs: dict, monkeypatch, code: int
) -> None:
    """The index and pack.json written last, and the progress lines: their failures are DataErrors too,
    and the pack is still not complete (then resumes to the same bytes)."""
    samples = samples_of(photos, "train")
    real = packs.write_atomically

    def failing(path: Path, write) -> None:
        if path.name in ("index.npy", "pack.json"):
            raise OSError(code, os.strerror(code))
        real(path, write)

    monkeypatch.setattr(packs, "write_atomically", failing)
    with pytest.raises(DataError) as failed:
        pack(tmp_path / "packs", photos, samples, "raw")
    assert failed.value.setting == "pack_dir" and len(str(failed.value).splitlines()) == 1
    assert ("disk" if code == errno.ENOSPC else "cannot write") in str(failed.value)
    path, key = pack_folder(tmp_path / "packs", photos / "train", samples, 3, 24)
    assert read_pack(path, key) is None
    monkeypatch.setattr(packs, "write_atomically", real)

    def no_progress(file, pieces: list) -> str | None:
        return "cannot write progress.jsonl (test)" if Path(file.name).name == "progress.jsonl" else None

    shutil.rmtree(path)
    monkeypatch.setattr(packs, "append_synced", no_progress)
    with pytest.raises(DataError, match="progress.jsonl"):
        pack(tmp_path / "packs", photos, samples, "raw")
    monkeypatch.undo()
    pack(tmp_path / "packs", photos, samples, "raw")
    assert_same_pack(path, reference_packs["raw"])


# --- train.py's error lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("value, start", [(None, "error: --pack-dir: "), ("/mnt/p", "error: --pack-dir /mnt/p: ")])
def test_a_pack_dir_error_names_the_flag_and_its_value(value: str | None, start: str) -> None:
    config = command_line_settings([] if value is None else ["--pack-dir", value]).data
    with pytest.raises(SystemExit) as stopped, train.data_errors(config):
        raise DataError("packing needs 14 MB of disk space in /mnt/p", "pack_dir")
    assert stopped.value.code == start + "packing needs 14 MB of disk space in /mnt/p"


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, without its checkpoints afterwards (hundreds of MB a run), even when the test failed."""
    yield tmp_path
    for path in tmp_path.rglob("*.pt"):
        path.unlink()


TRAIN = ["--epochs", "1", "--max-steps", "2", "--image-size", "67", "--batch-size", "8", "--workers", "0"]


@pytest.mark.slow
def test_a_pack_dir_that_is_a_file_is_one_error_line(work: Path) -> None:
    root = write_folder(work / "d", train=3, val=2)
    (work / "blocker").write_text("not a folder")
    flags = ["--data", str(root), "--loader", "packed", "--pack-dir", str(work / "blocker"), *TRAIN, "--device", "cpu"]
    result = run("train.py", *flags, cwd=work, check=False, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: skipping")]
    assert len(lines) == 1 and lines[0].startswith("error: --pack-dir "), result.stderr
    assert str(work / "blocker") in lines[0]


# --- The scripts end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_py_trains_from_a_pack_and_auto_finds_it_next_time(work: Path) -> None:
    root = write_folder(work / "d", train=8, val=2)
    common = ["--data", str(root), "--pack-dir", str(work / "p"), "--data-root", str(work / "data"), *TRAIN]
    first = run("train.py", *common, "--loader", "packed", "--device", "cpu", "--name", "packed", cwd=work)
    assert "Packing" in first.stdout and ", packed," in first.stdout, first.stdout
    assert len(list((work / "p").glob("*/pack.json"))) == 2
    again = run("train.py", *common, "--device", "cpu", "--name", "auto", cwd=work)
    assert "Packing" not in again.stdout and ", packed," in again.stdout, again.stdout
    assert "Traceback" not in first.stderr + again.stderr
    assert not (work / "data" / "cache").exists()  # never decoded into memory
    for name in ("packed", "auto"):
        assert (work / "runs" / name / "metrics.jsonl").is_file()


def test_bench_loader_only_needs_data(capsys: pytest.CaptureFixture) -> None:
    import bench

    with pytest.raises(SystemExit) as stopped:
        bench.get_args(["--loader-only"])
    assert stopped.value.code == 2
    assert "--data" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_on_glibc() -> None:
    from engine import reuse_freed_memory

    assert reuse_freed_memory()  # glibc took both settings (what train.py does on the CPU, harmless here)


# --- channels_last in presets.py -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 9, 11), (1, 3, 5, 5), (2, 1, 6, 7)])
def test_normalize_in_channels_last_equals_the_plain_computation(shape: tuple) -> None:
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    channels = shape[1]
    mean, std = torch.tensor(MEAN[:channels]), torch.tensor(STD[:channels])
    expected = (images.double() / 255 - mean.double().view(-1, 1, 1)) / std.double().view(-1, 1, 1)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = images.contiguous(memory_format=layout)
        out = normalize(x, MEAN[:channels], STD[:channels])
        assert out.dtype == torch.float32 and out.shape == shape
        assert out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)
    # A view of packed rows (B, R, R, C) -> (B, C, R, R), as PackedFiles.gather gives.
    view = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    torch.testing.assert_close(normalize(view, MEAN[:channels], STD[:channels]).double(), expected, atol=1e-6, rtol=0)


BOXES = {  # (left, top, width, height) in the unpadded image
    "one size": (0, [[0, 0, 20, 20], [20, 20, 20, 20], [3, 11, 20, 20], [19, 0, 20, 20]]),
    "padded": (4, [[-4, -4, 32, 32], [12, 12, 32, 32], [0, 5, 32, 32], [-2, 9, 32, 32]]),
    "the output size": (0, [[0, 0, 24, 24], [16, 16, 24, 24], [5, 7, 24, 24], [1, 2, 24, 24]]),
    "sizes": (0, [[0, 0, 20, 30], [0, 0, 40, 40], [30, 31, 7, 9], [0, 39, 40, 1]]),
}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("boxes", list(BOXES))
def test_cpu_crops_are_channels_last_and_equal_the_nchw_crops(layout, boxes: str) -> None:
    pad, boxes = BOXES[boxes]
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    flips = torch.tensor([False, True, True, False])
    out = crops_on_cpu(images.contiguous(memory_format=layout), torch.tensor(boxes), flips, 24, pad)
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 24, 24)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for i, (left, top, w, h) in enumerate(boxes):
        crop = F.pad(images[i], [pad] * 4)[:, top + pad : top + pad + h, left + pad : left + pad + w]
        crop = TF.horizontal_flip(crop) if flips[i] else crop
        expected = crop if (h, w) == (24, 24) else TF.resize(crop, [24, 24], antialias=True)
        assert torch.equal(out[i], expected), i
