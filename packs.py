"""The packed copy of an image folder: every image decoded once, at the stored size, into one file.

The paper trained on images "down-sampled to a fixed resolution of 256 x 256". A pack holds
exactly that: each image of a split with its shorter side resized to R and the central R x R
square kept (the pixels that folders.decode_for_store gives the in-memory path), as raw uint8,
one image after the other, so that an epoch reads bytes instead of decoding JPEGs again.

    <pack dir>/<folder>-<split>-<hash>-<R>px-<C>ch/
        images.u8      N x R x R x C uint8 (height, width, channels: the layout JPEG decoders
                       give, and channels_last for the network); unreadable files leave zeros
        index.npy      (2, M) int64: the row and the label of each of the M readable images
        pack.json      what was packed, and from what (the folder's listing_key); written last,
                       so a pack without it is never read as complete
        progress.jsonl while packing: one line per finished chunk (resumes after Ctrl-C or a crash)

Disk: R x R x C bytes per image, 196,608 at 256 px in colour (ImageNet's 1.28 M training images:
252 GB, its 50,000 validation images: 9.8 GB); the file is written sparsely, chunk by chunk.

Packing (`build_pack`) runs over `workers` processes, each decoding a chunk of 64 files and
writing it in place, flushed to disk before the chunk is counted as done. Reading
(`PackedFiles`) gathers a batch of rows from a memory map; data_pipeline's `Packed` does it in
background threads, into pinned memory on CUDA, copied to the device with non_blocking.
"""

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from checkpoints import write_atomically
from errors import BadImageError, DataError
from folders import decode_for_store, ignore_ctrl_c, listing_key

PACK_VERSION = 1  # bump when the layout changes, so that older packs are built again
CHUNK = 64  # images decoded and written by one worker at a time: the unit of progress and of resuming


def pack_folder(pack_dir: Path, split_dir: Path, samples: list, channels: int, size: int) -> tuple[Path, str]:
    """Where the pack of a split lives, and the key its pack.json must carry to be current."""
    name, key = listing_key(split_dir, samples, channels, size)
    return pack_dir / name, key


def read_pack(path: Path, key: str) -> dict | None:
    """A complete, current pack's metadata (pack.json with "rows", "labels" and "bad" added), or None:
    not packed, half-packed, packed from other files, or damaged (then a warning line)."""
    try:
        meta = json.loads((path / "pack.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        print(f"warning: {path / 'pack.json'} cannot be read (damaged?); packing again", file=sys.stderr)
        return None
    if meta.get("version") != PACK_VERSION or meta.get("key") != key:
        return None  # packed from other files (or by another version): stale
    try:
        rows, labels = np.load(path / "index.npy")
        image_bytes = meta["size"] ** 2 * meta["channels"]
        complete = (path / "images.u8").stat().st_size == meta["count"] * image_bytes
    except (OSError, ValueError, KeyError):
        complete = False
    if not complete:
        print(f"warning: the pack {path} is incomplete (damaged?); packing again", file=sys.stderr)
        return None
    return {**meta, "rows": rows, "labels": labels}


def build_pack(
    pack_dir: Path, split_dir: Path, samples: list, channels: int, size: int, workers: int
) -> tuple[Path, dict]:
    """The split's pack, packed first where it is missing, half-packed or stale -> (its folder, read_pack's metadata).

    Resumes a half-packed one of the same files where it stopped. Raises DataError (setting
    "pack_dir") when the disk lacks the space: checked before starting, and caught while writing.
    """
    path, key = pack_folder(pack_dir, split_dir, samples, channels, size)
    meta = read_pack(path, key)
    if meta is not None:
        return path, meta
    image_bytes = size * size * channels
    done = start_packing(path, key, len(samples), image_bytes)
    todo = [chunk for chunk in range(-(-len(samples) // CHUNK)) if chunk not in done]
    check_free_space(path, len(samples) * image_bytes, pack_dir)
    resuming = f", resuming after {len(done)} chunks of {CHUNK}" if done else ""
    print(f"Packing {len(samples)} images from {split_dir} at {size}px into {path}/ "
          f"(once: {disk_size(len(samples) * image_bytes)}{resuming})")  # fmt: skip
    write_chunks(path, samples, channels, size, workers, todo, done)
    bad = sorted(row for rows in done.values() for row in rows)
    readable = np.setdiff1d(np.arange(len(samples)), np.asarray(bad, dtype=np.int64))
    labels = np.asarray([samples[row][1] for row in readable.tolist()], dtype=np.int64)
    write_atomically(path / "index.npy", lambda f: np.save(f, np.stack([readable, labels])))
    meta = {"version": PACK_VERSION, "key": key, "count": len(samples), "channels": channels, "size": size,
            "source": str(split_dir.resolve()), "bad": [str(samples[row][0]) for row in bad]}  # fmt: skip
    write_atomically(path / "pack.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    (path / "progress.jsonl").unlink(missing_ok=True)
    return path, read_pack(path, key)


def start_packing(path: Path, key: str, count: int, image_bytes: int) -> dict[int, list[int]]:
    """Prepare `path` for packing -> the chunks already packed (resuming the same files), each with its unreadable rows.

    Anything else there (a stale or damaged pack, a half-pack of other files) is deleted first.
    """
    progress = path / "progress.jsonl"
    done = {}
    try:
        lines = progress.read_text().splitlines()
        header = json.loads(lines[0])
        if header == {"version": PACK_VERSION, "key": key, "count": count}:
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                    done[entry["chunk"]] = entry["bad"]
                except (ValueError, KeyError, TypeError):  # a line cut short by a crash: that chunk is packed again
                    continue
    except (OSError, ValueError, IndexError):
        pass
    images = path / "images.u8"
    if done and not (images.is_file() and images.stat().st_size == count * image_bytes):
        done = {}  # the half-pack's images are gone or cut short: start over
    if not done:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        progress.write_text(json.dumps({"version": PACK_VERSION, "key": key, "count": count}) + "\n")
    (path / "pack.json").unlink(missing_ok=True)
    with open(images, "ab") as f:
        f.truncate(count * image_bytes)  # sparse: blocks are allocated as chunks are written
    return done


def check_free_space(path: Path, total_bytes: int, pack_dir: Path) -> None:
    """DataError when the disk lacks the space the rest of the pack needs."""
    allocated = (path / "images.u8").stat().st_blocks * 512
    needed, free = total_bytes - allocated, shutil.disk_usage(path).free
    if needed > free:
        raise DataError(no_space_message(path, needed, free), "pack_dir")


def no_space_message(path: Path, needed: int, free: int | None = None) -> str:
    has = f", which has {disk_size(free)} free" if free is not None else " (the disk is full)"
    return (f"packing needs {disk_size(needed)} of disk space in {path.parent}{has}; "
            "free some space or put the pack on another disk")  # fmt: skip


def disk_size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def write_chunks(
    path: Path, samples: list, channels: int, size: int, workers: int, todo: list[int], done: dict
) -> None:
    """Decode and write the `todo` chunks over `workers` processes, recording each in progress.jsonl
    once it is on disk; a progress bar with an ETA on a terminal, a line every 10% otherwise."""
    loader = torch.utils.data.DataLoader(
        PackChunks(path / "images.u8", samples, channels, size),
        batch_size=None,
        sampler=todo,
        num_workers=workers,
        worker_init_fn=ignore_ctrl_c,
        generator=torch.Generator(),
    )
    total = len(samples)
    packed = sum(min(CHUNK, total - chunk * CHUNK) for chunk in done)
    bar = tqdm(total=total, initial=packed, desc="  packing", unit="img", disable=not sys.stdout.isatty())
    started, first, next_report = time.perf_counter(), packed, packed + total // 10
    with open(path / "progress.jsonl", "a") as progress:
        try:
            for chunk, count, bad, failure in loader:
                if failure is not None:
                    raise DataError(failure, "pack_dir")
                progress.write(json.dumps({"chunk": chunk, "bad": bad}) + "\n")
                progress.flush()
                os.fsync(progress.fileno())
                done[chunk] = bad
                packed += count
                bar.update(count)
                if bar.disable and packed >= next_report and packed < total:
                    rate = (packed - first) / max(time.perf_counter() - started, 1e-9)
                    eta = round((total - packed) / rate)
                    print(f"  packed {packed}/{total} images, ETA {eta // 60}:{eta % 60:02d}", flush=True)
                    next_report += total // 10
        except KeyboardInterrupt:
            bar.close()
            print(f"Packing stopped at {packed}/{total} images; the same command resumes it.", flush=True)
            raise
    bar.close()


class PackChunks(torch.utils.data.Dataset):
    """Chunk number -> (chunk, images written, unreadable rows, error message or None), for DataLoader workers.

    Each worker decodes its chunk's files and writes them at their rows of images.u8, flushed to
    disk before it reports: a chunk in progress.jsonl is on disk, whatever happens next.
    """

    def __init__(self, images_file: Path, samples: list, channels: int, size: int) -> None:
        self.images_file, self.samples, self.channels, self.size = images_file, samples, channels, size

    def __len__(self) -> int:
        return -(-len(self.samples) // CHUNK)

    def __getitem__(self, chunk: int) -> tuple[int, int, list[int], str | None]:
        rows = range(chunk * CHUNK, min((chunk + 1) * CHUNK, len(self.samples)))
        image_bytes = self.size * self.size * self.channels
        bad = []
        fd = os.open(self.images_file, os.O_WRONLY)
        try:
            for row in rows:
                try:
                    image = decode_for_store(self.samples[row][0], self.channels, self.size)
                except BadImageError as error:
                    print(f"warning: skipping {error}", file=sys.stderr)
                    bad.append(row)
                    continue
                # (C, R, R) -> (R, R, C): the layout of the pack
                os.pwrite(fd, image.permute(1, 2, 0).contiguous().numpy().tobytes(), row * image_bytes)
            os.fsync(fd)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                needed = (len(self.samples) - rows.start) * image_bytes
                return chunk, 0, bad, no_space_message(self.images_file.parent, needed)
            return chunk, 0, bad, f"cannot write {self.images_file} ({error})"
        finally:
            os.close(fd)
        return chunk, len(rows), bad, None


class PackedFiles:
    """A pack's images, read a batch at a time: image numbers -> (uint8 (B, C, R, R), labels (B,)).

    One gather from the memory map per batch, no decoding: numpy's take releases the GIL while it
    copies (and while the disk is read), so background threads gather batches side by side,
    without the pickling and shared-memory copies of worker processes.
    """

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.rows, self.labels = path, meta["rows"], meta["labels"]
        self.shape = (meta["count"], meta["size"], meta["size"], meta["channels"])
        self.images = np.memmap(path / "images.u8", dtype=np.uint8, mode="r", shape=self.shape)

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, indices: torch.Tensor, pin_memory: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels of `indices`, straight into page-locked memory with `pin_memory` (for CUDA)."""
        indices = indices.numpy()
        batch = torch.empty((len(indices), *self.shape[1:]), dtype=torch.uint8, pin_memory=pin_memory)
        np.take(self.images, self.rows[indices], axis=0, out=batch.numpy())  # (B, R, R, C)
        return batch.permute(0, 3, 1, 2), torch.from_numpy(self.labels[indices])  # -> (B, C, R, R), channels_last
