"""Files written so that a crash, Ctrl-C or a full disk never leaves half of one behind.

    >>> write_atomically(Path("metrics.jsonl"), lambda f: f.write(b'{"epoch": 1}\n'))

`write_atomically` writes into a temporary file beside the target, flushes it to the disk, then
renames it over the target: readers see the old file or the new one, never a mix. A full disk is
one `DiskFullError` line (the file, what was written, what is free), whatever the writer raised. Checkpoints,
metrics, pictures, result files and packs all write through it (or through `flush_to_disk` for files that
grow in place). `one_at_a_time` makes two processes take turns at the same work (packing a folder,
laying out ImageNet). A leaf module: it imports nothing of ours.

The flush (fsync) is what makes the new file survive a power cut, and it costs about a second per
checkpoint of AlexNet's size. The test suite, which saves dozens of checkpoints and never cuts the
power, sets ALEXNET_SKIP_FSYNC=1 to leave it out; nothing else should.
"""

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch
from filelock import FileLock, Timeout


class DiskFullError(OSError):
    """A write that ran out of disk space (or quota), as one line naming the file, what was written
    and what is free there. An OSError (ENOSPC), so that callers catching OSError still catch it."""

    def __init__(self, path: Path, written: int, needed: int | None = None) -> None:
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        if needed is None and path.is_file():
            needed = path.stat().st_size  # the size of the previous version
        needed = f", about {size_text(needed)} needed" if needed else ""
        message = (
            f"{path}: no space left on the disk ({size_text(written)} written when it ran out, "
            f"{size_text(free)} free in {path.parent}{needed}); free some space or write elsewhere"
        )
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def size_text(size: int) -> str:
    return f"{size / 1e9:,.2f} GB" if size >= 1e8 else f"{size / 1e6:,.1f} MB"


def out_of_space(error: BaseException | None) -> bool:
    """Whether `error`, or one it was raised while handling, is a full disk or quota: torch.save turns
    the OSError into a RuntimeError ("unexpected pos", "file write failed") raised during its handling."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def flush_to_disk(fd: int) -> None:
    """os.fsync, unless the environment says ALEXNET_SKIP_FSYNC=1 (the test suite)."""
    if os.environ.get("ALEXNET_SKIP_FSYNC") != "1":
        os.fsync(fd)


def write_atomically(path: Path, write: Callable[[BinaryIO], None], needed: int | None = None) -> None:
    """write(file) into a temporary file in the same folder, flushed to disk, then renamed over
    `path`: a crash or a full disk mid-write leaves the previous file intact. The temporary name
    carries the process id, so two processes writing the same file never write into one another's, and
    fits wherever `path` fits (temporary_name).
    `needed`: about how many bytes the file takes, for the message of a full disk (default: the previous
    version's size, if there is one)."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            flush_to_disk(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if out_of_space(error):
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)  # first: the space it took is free again, and the message says so
            raise DiskFullError(path, written, needed) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def temporary_name(path: Path) -> Path:
    """The temporary file beside `path` that write_atomically writes: NAME.PID.tmp, or, where that would be
    longer than a file name may be (NAME_MAX: 255 bytes on most file systems, counted in the name's bytes, so
    that 85 Chinese letters are the limit), the start of NAME, a hash of all of it (two long names that start
    alike still differ) and .PID.tmp. Always *.tmp, in the same folder, starting as NAME starts."""
    end, limit = f".{os.getpid()}.tmp", name_max(path.parent)
    if len(os.fsencode(path.name + end)) <= limit:
        return path.with_name(path.name + end)
    end = f".{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:12]}{end}"
    start = path.name
    while start and len(os.fsencode(start + end)) > limit:
        start = start[:-1]  # a letter at a time: a name in UTF-8 is never cut inside a letter
    return path.with_name(start + end)


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) that `folder`'s file system takes: 255 where it does not say."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # the folder does not exist (the write then fails with its own error)
        return 255


def save_atomically(obj: object, path: Path) -> None:
    """torch.save, atomically (see write_atomically)."""
    write_atomically(path, lambda f: torch.save(obj, f), needed=tensor_bytes(obj))


def tensor_bytes(obj: object) -> int:
    """The bytes of the tensors in `obj` and the dicts, lists and tuples in it: about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(value) for value in obj)
    return 0


@contextlib.contextmanager
def one_at_a_time(lock_path: Path, doing: str) -> Iterator[None]:
    """Hold the lock file `lock_path` for the block: where another process holds it, say so (it is `doing`:
    "packing X/") and wait for it. Two runs packing or laying out the same data take turns: the second then
    finds the work done. OSError where the lock file cannot be made (a read-only folder)."""
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"Waiting for another process that is {doing} (it holds {lock.lock_file})", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
