"""What a training run writes, and what it is made of: the run directory (runs/<name>/, never reused; removed
again where a run stopped before its first checkpoint), the checkpoints' contents (checkpoint_state), the
signals that stop a run with a checkpoint (StopSignal), the pictures (drawn after the checkpoints, each that
fails one warning), the closing lines; and the objects train.py passes between its steps (Setup, Run,
Training, Record).
"""

import atexit
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel

from alexnet import AlexNet
from atomic_files import DiskFullError, out_of_space
from checkpoints import rng_states
from data_pipeline import Data
from display_text import displayable, printable
from engine import autocast
from errors import first_sentence
from neighbours import nearest_training_images
from plots import plot_confusion, plot_filters, plot_neighbours, plot_predictions
from presets import eval_transform
from run_log import ChanceWatch, sample_indices, save_samples
from schedule import Schedule
from speedups import fast_forward
from train_settings import TrainSettings, saved_settings


@dataclass
class Setup:
    """Where and how this process computes."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast's dtype; None: fp32
    memory_format: torch.memory_format  # of the model and its input batches
    rank: int = 0  # this process, under torchrun
    world_size: int = 1  # the number of processes

    def log(self, *args, **kwargs) -> None:
        """print, on rank 0 only: the other processes keep quiet."""
        if self.rank == 0:
            print(*args, **kwargs)


class StopSignal:
    """Ctrl-C and SIGTERM (what schedulers send): finish the current step, save and stop. A second
    Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum: int, frame) -> None:  # no printing here: the signal may interrupt a print
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def requested(self, world_size: int, device: torch.device) -> bool:
        """Whether to stop now; with several processes, all of them stop at the same step."""
        if world_size == 1:
            return self.signal is not None
        flag = torch.tensor([self.signal or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signal = self.signal or (int(flag) or None)
        return self.signal is not None

    def name(self) -> str:
        return signal.Signals(self.signal).name


@dataclass
class Run:
    """What a run is, start to end: its settings, where it computes, its data, its folder and its stop signal."""

    settings: TrainSettings
    setup: Setup
    data: Data
    run_dir: Path
    stop: StopSignal

    def log(self, *args, **kwargs) -> None:
        self.setup.log(*args, **kwargs)


@dataclass
class Training:
    """What trains, and what --resume restores of it (with Record)."""

    model: AlexNet  # the plain module, whose state_dict checkpoints hold
    forward: torch.nn.Module  # what computes: fast_forward(model), wrapped by DDP and torch.compile where asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    criterion: torch.nn.Module
    steps_per_epoch: int
    ema: AveragedModel | None = None  # the moving average of the weights (--ema); ema.module is an AlexNet
    # Crop boxes, flips, lighting (drawn on the CPU): reseeded every epoch.
    augment_rng: torch.Generator = field(default_factory=torch.Generator)
    chance: ChanceWatch = field(default_factory=ChanceWatch)  # is the loss stuck at ln(classes)?


@dataclass
class Record:
    """What the run has measured so far, and where it reports it."""

    metrics: list[dict] = field(default_factory=list)
    best_top1: float = -1.0
    best_weights: str = "model"  # which weights best.pt holds: "model", or "ema" (their moving average)
    writer: object = None  # a TensorBoard SummaryWriter, with --tensorboard
    warned_data: bool = False  # the data-wait warning is given once a run


# ----------------------------------------------------------------------------------------------
# The run directory.


def check_run_dir(out_dir: str, name: str | None) -> None:
    """One error line, before minutes of loading, where a new run's folder could not be made."""
    out = Path(out_dir)
    nearest = next(path for path in (out, *out.parents) if path.exists())  # what already exists of it
    if not nearest.is_dir():
        raise SystemExit(f"error: --out-dir {out}: {nearest} is a file, not a folder; choose another --out-dir")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise SystemExit(f"error: --out-dir {out}: cannot write in {nearest} (permission denied)")
    run_dir = out / name if name else None
    if run_dir is not None and run_dir.is_dir() and not any(run_dir.glob("*.pt")):  # nothing to --resume there
        raise SystemExit(f"error: run directory {run_dir} already exists and holds no checkpoint (a run killed "
                         "before its first epoch ended?): remove it or choose another --name")  # fmt: skip
    if run_dir is not None and run_dir.exists():
        raise SystemExit(f"error: run directory {run_dir} already exists; choose another --name or --resume {run_dir}")


def new_run_dir(settings: TrainSettings, setup: Setup, data: Data, remove_if_unsaved: bool = False) -> Path:
    """runs/<name>/, created by rank 0; an existing one is never reused. Without --name, a run started
    in the same second as another gets the next free suffix (-2, -3, ...). `remove_if_unsaved`: see make_run_dir."""
    source = Path(settings.data.data).resolve().name if settings.data.data else settings.data.dataset
    named = settings.name is not None
    run_dir = Path(settings.out_dir) / (settings.name or f"{source}-{time.strftime('%Y%m%d-%H%M%S')}")
    if setup.world_size > 1:  # every process needs rank 0's choice of name
        names = [run_dir.name if setup.rank == 0 else None]
        if setup.rank == 0:
            run_dir = make_run_dir(run_dir, named, remove_if_unsaved)
            names = [run_dir.name]
        dist.broadcast_object_list(names, src=0)
        run_dir = run_dir.with_name(names[0])
    else:
        run_dir = make_run_dir(run_dir, named, remove_if_unsaved)
    if setup.rank == 0 and data.val.random_access:  # images at hand, without decoding files
        images, labels = data.val.take(sample_indices(8, len(data.val)))
        save_samples(images, labels, data.classes, run_dir / "samples")
    return run_dir


def make_run_dir(run_dir: Path, named: bool, remove_if_unsaved: bool = False) -> Path:
    """Create run_dir (mkdir, which two processes cannot both win), or run_dir-2, -3, ... when not `named`.
    With `remove_if_unsaved` (a script's run: not a notebook's or a test's, whose process goes on after the run),
    the folder is removed again at exit if the run stopped before its first checkpoint (remove_unsaved_run): a
    failed start does not leave a folder that refuses the same --name next time."""
    for attempt in range(1, 100):
        candidate = run_dir if attempt == 1 else run_dir.with_name(f"{run_dir.name}-{attempt}")
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            if remove_if_unsaved:
                atexit.register(remove_unsaved_run, candidate, candidate.stat(), os.getpid(), named)
            return candidate
        except FileExistsError:
            if named:  # made since check_run_dir: by a run starting now, which its folder's contents cannot tell
                raise SystemExit(
                    f"error: run directory {run_dir} already exists; choose another --name or --resume {run_dir}"
                ) from None
    raise SystemExit(f"error: {run_dir}-2 to -99 exist already; give a --name")


def remove_unsaved_run(run_dir: Path, made: os.stat_result, pid: int, named: bool = True) -> None:
    """At the exit of process `pid`, which made run_dir (`made`: its stat then): remove the folder where it holds
    nothing of value: no checkpoint (*.pt: the run stopped before its first), and nothing older than the folder
    (nothing that this run did not write). Else, or where it is another folder by now, leave it. One note line."""
    if os.getpid() != pid:  # a forked process (a DataLoader worker) ending, not the run
        return
    try:
        now = run_dir.stat()
        if (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino):
            return
        entries = list(run_dir.rglob("*"))
        if any(path.suffix == ".pt" or path.lstat().st_mtime_ns < made.st_mtime_ns for path in entries):
            return
        shutil.rmtree(run_dir)
    except OSError:  # gone already, or not ours to remove: left as it is
        return
    free = f": --name {printable(run_dir.name)} can be used again" if named else ""
    print(f"note: removed {printable(str(run_dir))}/, which held no checkpoint (the run stopped before its first)"
          f"{free}", file=sys.stderr)  # fmt: skip


@contextlib.contextmanager
def disk_errors(out_dir: str, run_dir: Path | None = None):
    """A full disk (or quota) while a run writes its checkpoints, metrics and pictures, as one line
    naming --out-dir, the file and the space; the checkpoints written before stay intact, and the line
    says how to go on from run_dir's last.pt where there is one."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        if not out_of_space(error):
            raise
        where = str(error)  # a DiskFullError names the file and the space
        if not isinstance(error, DiskFullError):  # a writer of its own (TensorBoard's)
            where = f"{getattr(error, 'filename', None) or out_dir}: no space left on the disk; free some space"
        if run_dir is not None and (run_dir / "last.pt").is_file():
            where += f"; {run_dir / 'last.pt'} is intact: once there is room, go on with --resume {run_dir}"
        raise SystemExit(f"error: --out-dir {out_dir}: {displayable(where)}") from None


# ----------------------------------------------------------------------------------------------
# Checkpoints, pictures, the closing lines.


def checkpoint_state(run: Run, training: Training, record: Record, epoch: int, partial: dict | None = None) -> dict:
    """Everything to rebuild the model (inference.py) and to continue exactly (--resume)."""
    return {
        "model": training.model.state_dict(),
        "model_config": training.model.config,
        "classes": run.data.classes,  # ids: what --evaluate checks the data against
        "class_names": run.data.class_names,  # what inference prints, where the ids are not names (ImageNet)
        "preprocess": asdict(run.data.preprocess),
        "optimizer": training.optimizer.state_dict(),
        "schedule": training.schedule.state_dict(),
        "scaler": training.scaler.state_dict(),
        "epoch": epoch,  # the last completed epoch
        "partial": partial,  # where an interrupted epoch stopped, or None
        "best_top1": record.best_top1,
        "best_weights": record.best_weights,  # "model", or "ema": best.pt holds the moving average
        "ema": training.ema.state_dict() if training.ema is not None else None,  # with its count of updates
        "world_size": run.setup.world_size,
        "args": saved_settings(run.settings),
        "rng": rng_states(run.setup.device),
    }


@contextlib.contextmanager
def drawing(run: Run, name: str) -> Iterator[None]:
    """A picture that cannot be drawn (a name or value matplotlib rejects, a bug of a library) is one warning
    line, and the run goes on: the checkpoints are saved before any picture. A full disk still stops the run
    (disk_errors), as it would at the next checkpoint."""
    try:
        yield
    except Exception as error:
        if out_of_space(error):
            raise
        reason = f"{type(error).__name__}: {printable(first_sentence(str(error)))}".rstrip(": ")
        run.log(f"warning: could not draw {printable(str(run.run_dir / name))} ({reason}); the run goes on")


def save_pictures(run: Run, model: AlexNet, val: dict) -> None:
    """The learned filters, sample predictions, the confusion matrix and the nearest neighbours
    (curves.png is drawn every epoch); each that fails is one warning (drawing)."""
    data, run_dir, setup = run.data, run.run_dir, run.setup
    with drawing(run, "filters.png"):
        weight = model.features[0].weight.detach().float().cpu()
        plot_filters(weight, run_dir / "filters.png", groups=model.config["groups"])
    names = data.class_names or data.classes  # "Samoyed" rather than "n02111889"
    if len(data.classes) <= 20:
        with drawing(run, "confusion.png"):
            plot_confusion(val["confusion"], names, run_dir / "confusion.png")
    if data.val.random_access:
        with drawing(run, "predictions.png"):
            images, labels = data.val.take(sample_indices(8, len(data.val)))
            model.eval()
            with torch.no_grad(), autocast(setup.device, setup.amp_dtype):
                x = eval_transform(images, data.preprocess).contiguous(memory_format=setup.memory_format)
                probabilities = fast_forward(model)(x).float().softmax(1)
            model.train()
            confidence, predictions = probabilities.max(1)
            plot_predictions(
                images.cpu(), labels.cpu(), predictions.cpu(), names, run_dir / "predictions.png", confidence.cpu()
            )
    if data.val.random_access and data.train.random_access:
        with drawing(run, "neighbours.png"):
            save_neighbours(run, model, names)


# PAPER: Figure 4 searched all 1.2 million training images; a seeded sample bounds the time here:
# 2,000 images took 10.8 s on the 2-core AVX2 VM (fp32, 67 px), 10,000 would take about 54 s.
NEIGHBOUR_SEARCH = 2_000  # training images searched (all of them in a smaller set)


def save_neighbours(run: Run, model: AlexNet, names: list[str]) -> None:
    """neighbours.png, the paper's Figure 4: five validation images, each beside the six training
    images nearest to it in fc7 (neighbours.py)."""
    data, setup = run.data, run.setup
    queries, query_labels = data.val.take(sample_indices(5, len(data.val)))
    with autocast(setup.device, setup.amp_dtype):
        search = {"k": 6, "max_images": NEIGHBOUR_SEARCH, "batch_size": run.settings.data.batch_size}
        indices, _ = nearest_training_images(model, queries, data.train, data.preprocess, **search)
    images, labels = data.train.take(indices.flatten().tolist())
    shape = (*indices.shape, *images.shape[1:])  # (Q * 6, C, H, W) -> (Q, 6, C, H, W)
    plot_neighbours(queries.cpu(), query_labels.cpu(), images.cpu().view(shape), labels.cpu().view(indices.shape),
                    names, run.run_dir / "neighbours.png")  # fmt: skip


def summarize(run: Run, record: Record) -> None:
    if record.metrics:
        total = sum(m["epoch_seconds"] for m in record.metrics)
        averaged = " (the weights' moving average)" if record.best_weights == "ema" else ""
        run.log(
            f"Done: best validation top-1 {100 * record.best_top1:.1f}%{averaged}, {total:.0f}s of training. "
            f"Checkpoints in {run.run_dir}/"
        )
    samples = sorted((run.run_dir / "samples").glob("*.png"))
    if samples:
        run.log(f"Try: python inference.py {samples[0]}")
    if record.writer is not None:
        record.writer.close()
    if run.setup.world_size > 1:
        dist.destroy_process_group()
