"""The packed copy of an image folder: every image decoded once, at the stored size, into one file.

The paper trained on images "down-sampled to a fixed resolution of 256 x 256". A pack holds
exactly that: each image of a split with its shorter side resized to R and the central R x R
square kept (the pixels that folders.decode_for_store gives the in-memory path), one image after
the other, so that an epoch reads bytes instead of decoding full-size JPEGs again.

    <pack dir>/<folder>-<split>-<hash>-<R>px-<C>ch[-jpeg]/
        images.u8      raw: N x R x R x C uint8 (height, width, channels: the layout JPEG decoders
                       give, and channels_last for the network); unreadable files leave zeros
        images.jpg     JPEG: each readable image as a JPEG file at JPEG_QUALITY, one after the other
        index.npy      (3, M) int64: the row, the label and the CRC-32 of the bytes of each of the M
                       readable images, checked as each is read; JPEG: (5, M), with where its bytes
                       start in images.jpg and how many they are
        pack.json      what was packed, and from what (the folder's listing_key), the CRC-32 of
                       index.npy and a digest of the source files' contents ("contents"); written
                       last, so a pack without it is never read as complete
        progress.jsonl while packing: one line per finished chunk (resumes after Ctrl-C or a crash),
                       with the SHA-256 of each of its source files (16 bytes of it, in hex)

Nothing read back is trusted (read_pack): every field of pack.json and the index is checked for
sense, against bounds, the data file's size and the files asked for, before anything is allocated;
one that fails is a warning line naming the file and the field, and the pack is packed again (a
progress line that makes no sense is packed again as one cut short by a crash is).

A pack is current when its key matches: the files' names, classes, sizes and modification times,
not their bytes. `build_pack(verify=True)` (train.py --verify-pack) also reads every source file
and compares the digest of its contents (0.2 ms a 110 KB photo, 0.05 ms a CIFAR-10 PNG, from the
page cache on one core; reading them from the disk is the rest).

Disk: raw, R x R x C bytes per image, 196,608 at 256 px in colour (ImageNet's 1.28 M training
images: 252 GB, its 50,000 validation images: 9.8 GB), written sparsely, chunk by chunk; JPEG,
about 27 KB an image at 256 px in 4:4:4 (measured on photos), decoded again at every read.

Packing (`build_pack`) runs over `workers` processes, each decoding a chunk of 64 files and
writing it in place (JPEG: handing it to the main process, which appends it), flushed to disk
before the chunk is counted as done. Reading
(`PackedFiles`) reads a batch's images straight into it; data_pipeline's `Packed` does it in
background threads, into pinned memory on CUDA, copied to the device with non_blocking.
"""

import contextlib
import errno
import io
import json
import os
import shutil
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from atomic_files import flush_to_disk, one_at_a_time, write_atomically
from display_text import displayable, printable, shown
from errors import BadImageError, DataError, library_warnings_off
from folders import (
    DIGEST_BYTES,
    decode_for_store,
    digest_of,
    file_digest,
    file_digests,
    ignore_ctrl_c,
    listing_key,
    listing_name,
    remove_stale_temporary_files,
)
from worker_deaths import WorkerDiedError, worker_batches

PACK_VERSION = 2  # bump when the layout changes, so that older packs are built again (2: each image's CRC-32)
PACK_FORMATS = ("raw", "jpeg")
CHUNK = 64  # images decoded and written by one worker at a time: the unit of progress and of resuming
JPEG_QUALITY = 90  # measured on 256 px photos: ~26 KB an image, pixels 2.1/255 from raw on average
# Colour kept at full resolution (4:4:4, no chroma subsampling): then nvJPEG on the GPU and Pillow on the CPU decode
# the same pixels (an H200 against Pillow: 0 levels apart; with 4:2:0, which upsamples colour differently, a mean
# of 1.7 and up to 15 on photos). It costs 31% more bytes (4:2:0: ~20 KB, 2.75/255) and 44% more CPU decoding
# time (0.62 ms a 256 px image with Pillow, against 0.43): docs/packed-copies.md.
JPEG_SUBSAMPLING = 0  # Pillow's code for 4:4:4
DATA_FILES = {"raw": "images.u8", "jpeg": "images.jpg"}


def pack_path(pack_dir: Path, split_dir: Path, channels: int, size: int, fmt: str = "raw") -> Path:
    """Where the pack of a split lives (found without reading the files: see pack_folder for its key)."""
    name = listing_name(split_dir, channels, size)
    return pack_dir / (name if fmt == "raw" else f"{name}-{fmt}")


def pack_folder(
    pack_dir: Path, split_dir: Path, samples: list, channels: int, size: int, fmt: str = "raw"
) -> tuple[Path, str]:
    """Where the pack of a split lives, and the key its pack.json must carry to be current."""
    _, key = listing_key(split_dir, samples, channels, size)
    return pack_path(pack_dir, split_dir, channels, size, fmt), key if fmt == "raw" else f"{key}-{fmt}"


@dataclass(frozen=True)
class PackRequest:
    """The pack asked for: of these files (path, label), at this side and these channels, in this format. What a
    pack's pack.json and index say is checked against it, field by field."""

    samples: list
    channels: int
    size: int
    fmt: str = "raw"


def read_pack(path: Path, key: str, request: PackRequest | None = None, quiet: bool = False) -> dict | None:
    """A complete, current pack's metadata (pack.json with the index arrays "rows", "labels", "crcs" and,
    for JPEG packs, "starts" and "lengths" added), or None: not packed, half-packed, packed from other
    files, or damaged (then a warning line).

    Nothing read is trusted: every field of pack.json and of the index is checked for sense (types,
    bounds, against the data file's size and, given the `request`, against the files asked for) before
    anything is allocated or read from the data file; the first that fails is named in the warning
    (`quiet`: none, for a second look at a pack already warned about)."""
    meta = read_pack_json(path, quiet)
    if meta is None or meta.get("version") != PACK_VERSION or meta.get("key") != key:
        return None  # not packed, or packed from other files (or by another version): stale
    problem = pack_json_problem(meta, request)
    if problem is not None:
        return damaged(path / "pack.json", problem, quiet)
    try:
        complete = (path / DATA_FILES[meta["format"]]).stat().st_size == meta["bytes"]
        index = read_index(path / "index.npy")
    except (OSError, ValueError):
        complete = False
    if not complete:
        return warn(f"warning: the pack {path} is incomplete (damaged?); packing again", quiet)
    if "index_crc" in meta and meta["index_crc"] != index_checksum(index):  # packs before it: unchecked
        return warn(f"warning: {path / 'index.npy'} is damaged (its checksum differs: the labels or places of its "
                    "images changed on the disk or in a copy); packing again", quiet)  # fmt: skip
    problem = index_problem(index, meta, request)
    if problem is not None:
        return damaged(path / "index.npy", problem, quiet)
    if request is not None and meta["bad"] != unreadable_files(index[0], request.samples):
        return damaged(path / "pack.json", "bad does not name the files that index.npy leaves out", quiet)
    return {**meta, **dict(zip(("rows", "labels", "crcs", "starts", "lengths"), index))}


PACK_JSON_LIMIT = 2**26  # bytes: pack.json names the unreadable files, but not a million of them
MAX_SIDE = 2**15  # the largest side a pack's images may have (a raw image of it: 3 GB)


def read_pack_json(path: Path, quiet: bool = False) -> dict | None:
    """pack.json as a dict, or None: absent, or damaged (then a warning line)."""
    try:
        if (path / "pack.json").stat().st_size > PACK_JSON_LIMIT:
            raise ValueError("too large")
        meta = json.loads((path / "pack.json").read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        return warn(f"warning: {path / 'pack.json'} cannot be read (damaged?); packing again", quiet)
    return meta


def read_index(path: Path) -> np.ndarray:
    """index.npy, mapped before it is read: a header that claims more numbers than the file holds is a ValueError,
    not an allocation of that many (numpy's np.load allocates what the header says); objects are refused."""
    return np.array(np.load(path, mmap_mode="r", allow_pickle=False))


def damaged(file: Path, problem: str, quiet: bool = False) -> None:
    """The warning line of a pack whose `file` makes no sense (`problem` names the field), which is packed again."""
    return warn(f"warning: {file}: {problem} (damaged or edited?); packing again", quiet)


def warn(line: str, quiet: bool) -> None:
    """Print a warning line on stderr, unless `quiet` -> None (read_pack's answer for a pack not to use)."""
    if not quiet:
        print(displayable(line), file=sys.stderr)  # it may name files and classes we did not write


def whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_text(value: object) -> bool:
    return isinstance(value, str)


def pack_json_problem(meta: dict, request: PackRequest | None) -> str | None:
    """What makes no sense in pack.json's fields (the first one, named), or None. `request`: what they must be."""
    wanted = {}
    if request is not None:
        wanted = {"format": request.fmt, "count": len(request.samples), "channels": request.channels}
        wanted["size"] = request.size
    for field, kinds in (("format", str), ("count", int), ("channels", int), ("size", int), ("bytes", int)):
        value = meta.get(field)
        if not isinstance(value, kinds) or isinstance(value, bool):
            return f"{field} = {shown(value)} is not a {'whole number' if kinds is int else 'text'}"
        if field in wanted and value != wanted[field]:
            return f"{field} = {shown(value)} is not the {shown(wanted[field])} asked for"
    fmt, count, channels, size = meta["format"], meta["count"], meta["channels"], meta["size"]
    if fmt not in PACK_FORMATS:
        return f"format = {shown(fmt)} is not one of {', '.join(PACK_FORMATS)}"
    if channels not in (1, 3):
        return f"channels = {shown(channels)} is not 1 or 3"
    if not 1 <= size <= MAX_SIDE:
        return f"size = {size} is not between 1 and {MAX_SIDE} pixels"
    if count < 0 or meta["bytes"] < 0:
        return f"{'count' if count < 0 else 'bytes'} is negative"
    if fmt == "raw" and meta["bytes"] != count * size * size * channels:
        return f"bytes = {meta['bytes']} is not {count} images of {size} x {size} x {channels} bytes"
    bad = meta.get("bad")
    if not isinstance(bad, list) or not all(isinstance(name, str) for name in bad) or len(bad) > count:
        return f"bad = {shown(bad)} is not a list of at most {count} file names"
    for field, fits in (("index_crc", whole_number), ("source", is_text), ("contents", is_text)):
        if field in meta and not fits(meta[field]):
            return f"{field} = {shown(meta[field])} is not a {'whole number' if fits is whole_number else 'text'}"
    return None


def index_problem(index: np.ndarray, meta: dict, request: PackRequest | None) -> str | None:
    """What makes no sense in a pack's index (the first array at fault, named), or None. pack.json is sane."""
    count, bad, fmt = meta["count"], meta["bad"], meta["format"]
    rows_of_arrays = 3 if fmt == "raw" else 5
    if index.dtype != np.int64 or index.shape != (rows_of_arrays, count - len(bad)):
        wanted = (rows_of_arrays, count - len(bad))  # (the images, less the unreadable ones)
        return f"index holds {index.dtype} numbers of shape {index.shape}, not int64 ones of shape {wanted}"
    rows, labels, crcs = index[:3]
    if len(rows) and (rows[0] < 0 or rows[-1] >= count or np.any(np.diff(rows) <= 0)):
        return f"rows are not increasing image numbers below {count}"
    if np.any(labels < 0):
        return "labels has a negative label"
    if np.any(crcs < 0) or np.any(crcs >= 2**32):
        return "crcs has a number that is not a CRC-32"
    if fmt == "jpeg":
        starts, lengths = index[3:]
        if np.any(lengths < 1) or np.any(lengths > meta["bytes"]):
            return f"lengths has an image of no bytes, or of more than the {meta['bytes']} of {DATA_FILES[fmt]}"
        if np.any(starts < 0) or np.any(starts + lengths > meta["bytes"]):
            return f"starts has an image that is not inside the {meta['bytes']} bytes of {DATA_FILES[fmt]}"
    return None if request is None else labels_problem(rows, labels, request.samples)


def labels_problem(rows: np.ndarray, labels: np.ndarray, samples: list) -> str | None:
    """Where a sane index's labels are not those of the files asked for (of their folders), or None."""
    expected = np.asarray([label for _, label in samples], dtype=np.int64)[rows]
    wrong = np.flatnonzero(labels != expected)
    if not len(wrong):
        return None
    row = int(rows[wrong[0]])
    return (f"labels: image {row} ({printable(str(samples[row][0]))}) has label {int(labels[wrong[0]])}, but its "
            f"folder is class {int(expected[wrong[0]])}")  # fmt: skip


def unreadable_files(rows: np.ndarray, samples: list) -> list[str]:
    """The files a pack of `samples` leaves out of its rows: what its pack.json must name as unreadable ("bad")."""
    return [str(samples[row][0]) for row in np.setdiff1d(np.arange(len(samples)), rows).tolist()]


def index_checksum(index: np.ndarray) -> int:
    """CRC-32 of a pack's index (each image's row, label, CRC-32 and place): a flipped label would train silently."""
    return zlib.crc32(np.ascontiguousarray(index, dtype=np.int64).tobytes())


def build_pack(
    pack_dir: Path, split_dir: Path, samples: list, channels: int, size: int, workers: int, fmt: str = "raw",
    verify: bool = False,
) -> tuple[Path, dict]:  # fmt: skip
    """The split's pack, packed first where it is missing, half-packed or stale -> (its folder, read_pack's metadata).

    Resumes a half-packed one of the same files where it stopped. A second process packing the same
    split waits for the first (packing_lock), then reads its pack. Raises DataError (setting
    "pack_dir") when the disk lacks the space: checked before starting, and caught while writing.

    Current means packed from files of the same names, classes, sizes and modification times (the
    key, folders.listing_key): a file whose bytes changed under the same size and time is not seen.
    `verify` reads every file again and compares its contents with those packed (the digest of each
    file, recorded as it was packed): a pack, or a half-pack's chunk, of other contents is packed
    again, after a warning line.
    """
    path, key = pack_folder(pack_dir, split_dir, samples, channels, size, fmt)
    request = PackRequest(samples, channels, size, fmt)
    digests = None
    if verify:
        print(f"Reading the {len(samples)} image files of {split_dir} to check the contents of their pack")
        digests = file_digests([file for file, _ in samples], workers)
    meta = current_pack(path, key, request, digests)
    if meta is None:
        with packing_lock(path):
            remove_stale_temporary_files(path)
            meta = current_pack(path, key, request, digests, quiet=True)  # packed by another process meanwhile?
            if meta is None:
                pack_split(path, key, split_dir, samples, channels, size, workers, fmt, digests)
                meta = read_pack(path, key, request)
    return path, meta


def current_pack(
    path: Path, key: str, request: PackRequest, digests: list[bytes] | None, quiet: bool = False
) -> dict | None:
    """read_pack, and with `digests` (folders.file_digest of each file now), only a pack of those contents."""
    meta = read_pack(path, key, request, quiet)
    if meta is None or digests is None or meta.get("contents") == digest_of(digests):
        return meta
    why = "records no contents to check (packed before they were recorded)"
    if "contents" in meta:
        why = "was packed from files whose contents have changed since (their names, sizes and times have not)"
    return warn(f"warning: the pack {path} {why}; packing again", quiet)


@contextlib.contextmanager
def packing_lock(path: Path) -> Iterator[None]:
    """Hold the lock (PATH.lock, beside the pack's folder) while a pack is packed: where another process
    holds it, wait, after a line saying so. (A lock file, not the pack's folder, which packing remakes.)"""
    with contextlib.ExitStack() as held:
        try:
            existing_folder(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(one_at_a_time(path.with_name(f"{path.name}.lock"), f"packing {path}/"))
        except OSError as error:  # e.g. --pack-dir is read-only
            raise DataError(f"cannot write a pack in {path.parent} ({error.strerror or error})", "pack_dir") from None
        yield


def pack_split(
    path: Path, key: str, split_dir: Path, samples: list, channels: int, size: int, workers: int, fmt: str,
    digests: list[bytes] | None = None,
) -> None:  # fmt: skip
    """Pack the split into `path`, resuming a half-pack of the same files (build_pack, with the lock held);
    with `digests` (each file's folders.file_digest), only its chunks of the same contents."""
    # JPEG's size is known once written: reckon a fifth of raw's (measured: a tenth); and the index.
    needed = len(samples) * (size * size * channels // (1 if fmt == "raw" else 5) + 32) + 2**20
    check_free_space(path / DATA_FILES[fmt], needed, fmt)  # before anything is written
    try:
        done = start_packing(path, key, len(samples), size * size * channels, fmt, digests)
    except OSError as error:  # e.g. --pack-dir is a file, or read-only
        raise DataError(f"cannot write a pack in {path.parent} ({error.strerror or error})", "pack_dir") from None
    todo = [chunk for chunk in range(-(-len(samples) // CHUNK)) if chunk not in done]
    resuming = f", resuming after {len(done)} chunks of {CHUNK}" if done else ""
    print(f"Packing {len(samples)} images from {split_dir} at {size}px into {path}/ "
          f"(once: {'' if fmt == 'raw' else 'at most about '}{disk_size(needed)}{resuming})")  # fmt: skip
    write_chunks(path, samples, channels, size, workers, todo, done, fmt)
    try:
        finish_pack(path, key, split_dir, samples, channels, size, fmt, done)
    except OSError as error:  # the index and pack.json need little room
        raise DataError(write_failure(error, Path(error.filename or path / "pack.json"), 2**20), "pack_dir") from None


def finish_pack(
    path: Path, key: str, split_dir: Path, samples: list, channels: int, size: int, fmt: str, done: dict
) -> None:
    """The index, then pack.json: from then on the pack is complete. progress.jsonl goes."""
    bad = sorted(row for entry in done.values() for row in entry["bad"])
    readable = np.setdiff1d(np.arange(len(samples)), np.asarray(bad, dtype=np.int64))
    labels = np.asarray([samples[row][1] for row in readable.tolist()], dtype=np.int64)
    crcs = np.zeros(len(samples), dtype=np.int64)
    for chunk, entry in done.items():
        chunk_rows = range(chunk * CHUNK, min((chunk + 1) * CHUNK, len(samples)))
        crcs[[row for row in chunk_rows if row not in entry["bad"]]] = entry["crcs"]
    index = [readable, labels, crcs[readable]]
    if fmt == "jpeg":  # where each readable image's bytes are in images.jpg
        spans = np.zeros((2, len(samples)), dtype=np.int64)
        for chunk, entry in done.items():
            chunk_rows = range(chunk * CHUNK, min((chunk + 1) * CHUNK, len(samples)))
            rows = [row for row in chunk_rows if row not in entry["bad"]]
            lengths = np.asarray(entry["lengths"], dtype=np.int64)
            spans[:, rows] = np.stack([entry["start"] + np.cumsum(lengths) - lengths, lengths])
        index += [spans[0, readable], spans[1, readable]]
    index = np.stack(index)
    write_atomically(path / "index.npy", lambda f: np.save(f, index))
    meta = {"version": PACK_VERSION, "key": key, "format": fmt, "count": len(samples), "channels": channels,
            "size": size, "bytes": (path / DATA_FILES[fmt]).stat().st_size, "source": str(split_dir.resolve()),
            "bad": [str(samples[row][0]) for row in bad], "index_crc": index_checksum(index),
            "contents": digest_of([bytes.fromhex(done[chunk]["contents"]) for chunk in sorted(done)])}  # fmt: skip
    write_atomically(path / "pack.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    (path / "progress.jsonl").unlink(missing_ok=True)


def start_packing(
    path: Path, key: str, count: int, image_bytes: int, fmt: str, digests: list[bytes] | None = None
) -> dict[int, dict]:
    """Prepare `path` for packing -> the chunks already packed (resuming the same files): their unreadable
    rows ("bad"), the CRC-32 of each readable image ("crcs"), the digests of their files ("contents") and,
    for JPEG, where their bytes start and each image's length. With `digests` (each file's
    folders.file_digest now), only the chunks packed from the same contents.

    Anything else there (a stale or damaged pack, a half-pack of other files) is deleted first.
    """
    progress, images = path / "progress.jsonl", path / DATA_FILES[fmt]
    header = {"version": PACK_VERSION, "key": key, "count": count}
    done = {}
    try:
        if progress.stat().st_size > 128 * count + 2**20:  # more than its lines can hold: not read
            raise ValueError("too large")
        lines = progress.read_text().splitlines()
        if json.loads(lines[0]) == header:
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut short by a crash: that chunk is packed again
                    continue
                if progress_entry_fits(entry, count, fmt):  # else, damaged or edited: packed again too
                    done[entry.pop("chunk")] = entry
    except (OSError, ValueError, IndexError):
        pass
    if digests is not None:
        done = {chunk: entry for chunk, entry in done.items() if entry["contents"] == chunk_contents(digests, chunk)}
    # Raw: the file has its full size from the start. JPEG: bytes past the last recorded chunk
    # were written by a chunk that was not recorded, and are cut off.
    ends = [entry["start"] + sum(entry["lengths"]) for entry in done.values()] if fmt == "jpeg" else []
    end = count * image_bytes if fmt == "raw" else max(ends, default=0)
    if done and not (images.is_file() and images.stat().st_size >= end):
        done = {}  # the half-pack's images are gone or cut short: start over
    if not done:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        end = count * image_bytes if fmt == "raw" else 0
    # Only the lines read back stay (a line cut short by a crash goes), so that the next ones append cleanly.
    lines = [json.dumps(header)] + [json.dumps({"chunk": chunk, **entry}) for chunk, entry in done.items()]
    write_atomically(progress, lambda f: f.write("".join(line + "\n" for line in lines).encode()))
    (path / "pack.json").unlink(missing_ok=True)
    with open(images, "ab") as f:
        f.truncate(end)  # raw: sparse, blocks are allocated as chunks are written
    return done


def progress_entry_fits(entry: object, count: int, fmt: str) -> bool:
    """Whether a line of progress.jsonl makes sense for a split of `count` files: a chunk of it, its
    unreadable rows among the chunk's, a CRC-32 (and for JPEG a length) for each of the others, the
    digest of each of its files."""
    keys = {"chunk", "bad", "crcs", "contents", *(("start", "lengths") if fmt == "jpeg" else ())}
    if not isinstance(entry, dict) or set(entry) != keys or not whole_number(entry["chunk"]):
        return False
    rows = range(entry["chunk"] * CHUNK, min((entry["chunk"] + 1) * CHUNK, count))
    bad, crcs = entry["bad"], entry["crcs"]
    if not rows or not isinstance(bad, list) or not isinstance(crcs, list) or not isinstance(entry["contents"], str):
        return False
    if not all(whole_number(row) and row in rows for row in bad) or len(set(bad)) != len(bad):
        return False
    if len(crcs) != len(rows) - len(bad) or not all(whole_number(crc) and 0 <= crc < 2**32 for crc in crcs):
        return False
    if len(entry["contents"]) != 2 * DIGEST_BYTES * len(rows) or not is_hex(entry["contents"]):
        return False
    if fmt == "raw":
        return True
    start, lengths = entry["start"], entry["lengths"]
    if not (whole_number(start) and start >= 0 and isinstance(lengths, list) and len(lengths) == len(crcs)):
        return False
    return all(whole_number(length) and length > 0 for length in lengths)


def is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def chunk_contents(digests: list[bytes], chunk: int) -> str:
    """What progress.jsonl records of a chunk's files ("contents"): their digests, in hex, one after the other."""
    return "".join(digest.hex() for digest in digests[chunk * CHUNK : (chunk + 1) * CHUNK])


def check_free_space(images: Path, total_bytes: int, fmt: str) -> None:
    """DataError when the disk lacks the space the rest of the pack needs (what a half-pack holds counts as written)."""
    written = 0
    if images.is_file():
        written = images.stat().st_blocks * 512 if fmt == "raw" else images.stat().st_size
    needed, free = total_bytes - written, shutil.disk_usage(existing_folder(images)).free
    if needed > free:
        raise DataError(no_space_message(images.parent, needed, free), "pack_dir")


def existing_folder(path: Path) -> Path:
    """The nearest of path's folders that exists (a pack's folder may not, yet); DataError where it is a file."""
    existing = next(folder for folder in path.parents if folder.exists())
    if not existing.is_dir():
        raise DataError(f"{existing} is a file, not a folder; choose a folder for the packs", "pack_dir")
    return existing


def no_space_message(path: Path, needed: int, free: int | None = None) -> str:
    has = f", which has {disk_size(free)} free" if free is not None else " (the disk is full)"
    return (f"packing needs {disk_size(needed)} of disk space in {path.parent}{has}; "
            "free some space or put the pack on another disk")  # fmt: skip


def write_failure(error: OSError, file: Path, needed: int) -> str:
    """What a failed write of a file in a pack's folder says: the disk is full (about `needed` bytes
    more wanted), or the error itself."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space_message(file.parent, needed)
    return f"cannot write {file} ({error.strerror or error})"


def disk_size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB" if size >= 1e7 else f"{size / 1e6:.1f} MB"


def write_chunks(
    path: Path, samples: list, channels: int, size: int, workers: int, todo: list[int], done: dict, fmt: str
) -> None:
    """Decode and write the `todo` chunks over `workers` processes, recording each in progress.jsonl
    once it is on disk; a progress bar with an ETA on a terminal, a line every 10% otherwise.

    Raw chunks are written in place by the workers; JPEG chunks come back as bytes, which this
    process appends to images.jpg.
    """
    loader = torch.utils.data.DataLoader(
        PackChunks(path / DATA_FILES[fmt], samples, channels, size, fmt),
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
    with open(path / "progress.jsonl", "a") as progress, open(path / DATA_FILES[fmt], "ab") as images:
        try:
            for chunk, count, bad, crcs, contents, failure, encoded in worker_batches(loader):
                entry = {"bad": bad, "crcs": crcs, "contents": contents}
                if encoded is not None and failure is None:
                    entry.update(start=images.tell(), lengths=[len(data) for data in encoded])
                    failure = append_synced(images, encoded)
                if failure is not None:
                    raise DataError(failure, "pack_dir")
                failure = append_synced(progress, [json.dumps({"chunk": chunk, **entry}) + "\n"])
                if failure is not None:
                    raise DataError(failure, "pack_dir")
                done[chunk] = entry
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
        except WorkerDiedError as error:  # e.g. the out-of-memory killer: what was packed is on disk
            bar.close()
            raise DataError(f"{error} at {packed}/{total} images; the same command resumes packing where it "
                            "stopped (fewer workers need less memory)", "workers") from None  # fmt: skip
    bar.close()


def append_synced(file, pieces: list) -> str | None:
    """Write pieces at the end of an open file and flush them to disk -> None, or what went wrong."""
    try:
        for piece in pieces:
            file.write(piece)
        file.flush()
        flush_to_disk(file.fileno())
    except OSError as error:
        return write_failure(error, Path(file.name), sum(len(piece) for piece in pieces))
    return None


class PackChunks(torch.utils.data.Dataset):
    """Chunk number -> (chunk, images, unreadable rows, the readable images' CRC-32s, the digests of the chunk's
    files (chunk_contents), error message or None, JPEG bytes or None), for DataLoader workers.

    Raw: each worker decodes its chunk's files and writes them at their rows of images.u8, flushed
    to disk before it reports: a chunk in progress.jsonl is on disk, whatever happens next. JPEG:
    it returns them encoded, for the main process to append.
    """

    def __init__(self, images_file: Path, samples: list, channels: int, size: int, fmt: str = "raw") -> None:
        self.images_file, self.samples, self.channels, self.size, self.fmt = images_file, samples, channels, size, fmt

    def __len__(self) -> int:
        return -(-len(self.samples) // CHUNK)

    def __getitem__(self, chunk: int) -> tuple[int, int, list[int], list[int], str, str | None, list[bytes] | None]:
        rows = range(chunk * CHUNK, min((chunk + 1) * CHUNK, len(self.samples)))
        images, bad = [], []
        for row in rows:
            try:
                images.append((row, decode_for_store(self.samples[row][0], self.channels, self.size)))
            except BadImageError as error:
                print(f"warning: skipping {displayable(error)}", file=sys.stderr)
                bad.append(row)
        # Read again just after decoding (from the page cache): what verifying compares later.
        contents = "".join(file_digest(self.samples[row][0]).hex() for row in rows)  # (chunk_contents)
        if self.fmt == "jpeg":
            encoded = [encode_jpeg(image) for _, image in images]
            return chunk, len(rows), bad, [zlib.crc32(data) for data in encoded], contents, None, encoded
        pixels = [(row, image.permute(1, 2, 0).contiguous().numpy()) for row, image in images]  # (C, R, R) -> (R, R, C)
        crcs = [zlib.crc32(image) for _, image in pixels]
        return chunk, len(rows), bad, crcs, contents, self.write_raw(pixels), None

    def write_raw(self, images: list[tuple[int, np.ndarray]]) -> str | None:
        """Each (row, (R, R, C) image) at its row of images.u8, flushed to disk -> None, or what went wrong."""
        image_bytes = self.size * self.size * self.channels
        fd = os.open(self.images_file, os.O_WRONLY)
        try:
            for row, image in images:
                os.pwrite(fd, image.tobytes(), row * image_bytes)
            flush_to_disk(fd)
        except OSError as error:
            return write_failure(error, self.images_file, (len(self.samples) - images[0][0]) * image_bytes)
        finally:
            os.close(fd)
        return None


def encode_jpeg(image: torch.Tensor) -> bytes:
    """(C, R, R) uint8 -> the bytes of a JPEG file (Pillow's libjpeg-turbo, JPEG_QUALITY, 4:4:4)."""
    pixels = image.permute(1, 2, 0).numpy()  # (R, R, C)
    buffer = io.BytesIO()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def decode_jpeg_batch(blobs: list[torch.Tensor], channels: int, device: torch.device) -> torch.Tensor:
    """JPEG files' bytes (1-D uint8 CPU tensors of images of one size) -> uint8 (B, C, R, R) on `device`.

    On CUDA, nvJPEG decodes the whole batch in one call (torchvision.io.decode_jpeg with a list), so the
    CPU only reads bytes. torchvision 0.29 deprecates its image codecs in favour of torchcodec's; until
    they are gone this is the one GPU JPEG decoder that every torchvision since 0.19 has.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with library_warnings_off("The image decoding and encoding capabilities of TorchVision"):  # 0.29's notice
        images = decode_jpeg(blobs, mode=mode, device=device)
    return torch.stack(images)  # -> (B, C, R, R)


def decode_jpeg(data: np.ndarray, out: np.ndarray) -> None:
    """The bytes of a JPEG file -> its pixels, written into `out` (R, R, C): Pillow decodes without the GIL."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("L" if out.shape[-1] == 1 else "RGB"))
    out[...] = pixels.reshape(out.shape)


class PackedFiles:
    """A pack's images, read a batch at a time: image numbers -> (uint8 (B, C, R, R), labels (B,)).

    Raw: each image is one read of its bytes straight into the batch, no decoding. JPEG: each image
    read, then decoded by Pillow's libjpeg-turbo. Each image's bytes are checked against the CRC-32
    packed with them (a DataError if they differ: docs/packed-copies.md measures the cost). Reads
    (os.preadv), checksums and decoding release the GIL, so background threads gather batches side by
    side, without the pickling and shared-memory copies of worker processes. (Reads, not a memory
    map: copying from a map faults in every 4 KB page; measured on 2 cores, 15,000 against 1,900
    images a second on one thread.)
    """

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.format, self.rows, self.labels = path, meta["format"], meta["rows"], meta["labels"]
        self.crcs = meta["crcs"]
        self.starts, self.lengths = meta.get("starts"), meta.get("lengths")
        self.shape = (meta["count"], meta["size"], meta["size"], meta["channels"])
        self.file = path / DATA_FILES[self.format]
        self.fd = os.open(self.file, os.O_RDONLY)

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, indices: torch.Tensor, pin_memory: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels of `indices`, straight into page-locked memory with `pin_memory` (for CUDA)."""
        indices = indices.numpy()
        batch = torch.empty((len(indices), *self.shape[1:]), dtype=torch.uint8, pin_memory=pin_memory)
        pixels = batch.numpy()  # (B, R, R, C)
        if self.format == "raw":
            image_bytes = pixels[0].nbytes if len(pixels) else 0
            for i, (row, crc) in enumerate(zip(self.rows[indices].tolist(), self.crcs[indices].tolist())):
                self.read_into(pixels[i], row * image_bytes, crc)
        else:
            spans = zip(self.starts[indices].tolist(), self.lengths[indices].tolist(), self.crcs[indices].tolist())
            for i, (start, length, crc) in enumerate(spans):
                data = np.empty(length, np.uint8)
                self.read_into(data, start, crc)
                decode_jpeg(data, pixels[i])
        return batch.permute(0, 3, 1, 2), torch.from_numpy(self.labels[indices])  # -> (B, C, R, R), channels_last

    def gather_encoded(self, indices: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A JPEG pack's files for `indices`, undecoded (1-D uint8 tensors), and their labels: for decode_jpeg_batch."""
        indices = indices.numpy()
        blobs = []
        spans = zip(self.starts[indices].tolist(), self.lengths[indices].tolist(), self.crcs[indices].tolist())
        for start, length, crc in spans:
            data = torch.empty(length, dtype=torch.uint8)
            self.read_into(data.numpy(), start, crc)
            blobs.append(data)
        return blobs, torch.from_numpy(self.labels[indices])

    def read_into(self, buffer: np.ndarray, offset: int, crc: int) -> None:
        """Fill `buffer` with the pack's bytes from `offset` on, checked to have the CRC-32 `crc`."""
        view = memoryview(buffer).cast("B")
        if hasattr(os, "preadv"):
            count = os.preadv(self.fd, [view], offset)
        else:  # where Python has no preadv: one more copy
            data = os.pread(self.fd, len(view), offset)
            count, view[: len(data)] = len(data), data
        if count != len(view):
            raise DataError(
                f"{self.file} is shorter than its pack.json says; delete {self.path} to pack again", "pack_dir"
            )
        if zlib.crc32(view) != crc:  # (zlib releases the GIL: the reading threads check side by side)
            raise DataError(
                f"{self.file}: damaged: the image at byte {offset} is not the one packed (its checksum differs: "
                f"bytes changed on the disk or in a copy); delete {self.path} to pack it again",
                "pack_dir",
            )
