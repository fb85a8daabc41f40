"""DataLoader worker processes that die (the kernel's out-of-memory killer, a crash in a decoder): one typed
error with a one-line message, raised where the next batch is asked for, never in the middle of a training step.

PyTorch's DataLoader hears of a worker's death through SIGCHLD, and its handler raises a RuntimeError in the main
thread wherever that thread is: inside loss.backward(), between the optimiser's step and the schedule's... A
checkpoint saved after that would hold half a step. `worker_batches` reads a loader through a wrapper of that
handler (`defer_worker_deaths`) that keeps the error until the next batch is asked for, and turns each of the
loader's ways of telling a death into one WorkerDiedError:

    >>> for batch in worker_batches(loader): ...    # WorkerDiedError("a data-loading worker died (signal 9, ...)")
"""

import re
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType

from errors import DataError


class WorkerDiedError(DataError):
    """A data-loading worker process died; the message is one line saying how ("a data-loading worker died
    (signal 9, perhaps out of memory)"), the setting at fault is "workers"."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "workers")


# SIGCHLD is one per process: what PyTorch's handler raised while no batch was being fetched, and whether one is.
DEATHS: list[str] = []
FETCHING = threading.Event()


def worker_batches(loader: Iterable) -> Iterator:
    """The items of a DataLoader; a worker's death is a WorkerDiedError raised here, between two items."""
    iterator = iter(loader)  # (which, with worker processes, sets PyTorch's SIGCHLD handler first)
    defer_worker_deaths()
    while True:
        if DEATHS:
            raise WorkerDiedError(death_message(DEATHS.pop(0), iterator))
        try:
            FETCHING.set()
            item = next(iterator)
        except StopIteration:
            return
        except RuntimeError as error:  # from the handler, or from the loader's own check after 5 s without data
            if not str(error).startswith("DataLoader worker"):
                raise
            raise WorkerDiedError(death_message(DEATHS.pop(0) if DEATHS else str(error), iterator)) from None
        finally:
            FETCHING.clear()
        yield item


def defer_worker_deaths() -> None:
    """Wrap PyTorch's SIGCHLD handler (once it is set, and once only): its error is raised while a batch is
    fetched, and kept in DEATHS for the next fetch otherwise. Only the main thread can set a handler."""
    handler = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
    if threading.current_thread() is not threading.main_thread() or not callable(handler):
        return
    if getattr(handler, "defers_worker_deaths", False):
        return

    def deferring(signum: int, frame: FrameType | None) -> None:
        try:
            handler(signum, frame)
        except RuntimeError as error:
            if FETCHING.is_set():
                raise
            DEATHS.append(str(error))

    deferring.defers_worker_deaths = True
    signal.signal(signal.SIGCHLD, deferring)


SIGNAL_NAMES = {signal.strsignal(number): number for number in signal.Signals if signal.strsignal(number)}
WHY = {signal.SIGKILL: "perhaps out of memory", getattr(signal, "SIGBUS", 0): "perhaps out of shared memory"}


def death_message(error: str, iterator: object = None) -> str:
    """PyTorch's words for a worker's death (and the exit codes of the iterator's workers) -> one line."""
    codes = [worker.exitcode for worker in getattr(iterator, "_workers", []) if worker.exitcode]  # (-N: signal N)
    killed = re.search(r"killed by signal: ([^.]+)\.", error)
    number = SIGNAL_NAMES.get(killed.group(1)) if killed else -codes[0] if codes and codes[0] < 0 else None
    if number is not None:
        how = f"signal {number}, {WHY.get(number) or signal_name(number)}"
    else:
        exited = re.search(r"exit code (-?\d+)", error)
        code = int(exited.group(1)) if exited else codes[0] if codes else None
        how = f"exit code {code}" if code is not None else "no reason given"
    return f"a data-loading worker died ({how})"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # e.g. a real-time signal
        return "an unnamed signal"
