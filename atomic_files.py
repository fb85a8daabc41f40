"""Files written so that a crash, Ctrl-C or a full disk never leaves half of one behind.

    >>> write_atomically(Path("metrics.jsonl"), lambda f: f.write(b'{"epoch": 1}\n'))

`write_atomically` writes into a temporary file beside the target, flushes it to the disk, then
renames it over the target: readers see the old file or the new one, never a mix. Checkpoints,
metrics, result files and packs all write through it (or through `flush_to_disk` for files that
grow in place). A leaf module: it imports nothing of ours.

The flush (fsync) is what makes the new file survive a power cut, and it costs about a second per
checkpoint of AlexNet's size. The test suite, which saves dozens of checkpoints and never cuts the
power, sets ALEXNET_SKIP_FSYNC=1 to leave it out; nothing else should.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch


def flush_to_disk(fd: int) -> None:
    """os.fsync, unless the environment says ALEXNET_SKIP_FSYNC=1 (the test suite)."""
    if os.environ.get("ALEXNET_SKIP_FSYNC") != "1":
        os.fsync(fd)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """write(file) into a temporary file in the same folder, flushed to disk, then renamed over
    `path`: a crash or a full disk mid-write leaves the previous file intact. The temporary name
    carries the process id, so two processes writing the same file never write into one another's."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            flush_to_disk(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_atomically(obj: object, path: Path) -> None:
    """torch.save, atomically (see write_atomically)."""
    write_atomically(path, lambda f: torch.save(obj, f))
