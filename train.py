"""Train AlexNet on the built-in shapes dataset, MNIST, Fashion-MNIST, CIFAR, ImageNet or an image folder.

Examples:
    python train.py                                      # built-in shapes, offline, ~5 min on 2 CPU cores
    python train.py --dataset mnist --download           # torchvision datasets live under data/
    python train.py --dataset imagenet --data-root DIR --recipe paper   # the paper's network and recipe on
                                 # ImageNet as downloaded: Kaggle's, the official archives, or train/ val/
    python train.py --data ../shared/data/cifar10 --recipe cifar10   # CIFAR-10 to 80% in 26 minutes on 2 CPU cores
    python train.py --data ../shared/data/hymenoptera --pretrained imagenet --epochs 5   # fine-tune
    python train.py --data DIR --loader packed --pack-dir /nvme/packs   # decode every image once into a
                                 # packed copy on a fast disk, then train from it (later runs find it)
    python train.py --resume runs/shapes-20261122-101500 # continue a run (its last.pt), same settings
    python train.py --data DIR --evaluate runs/x/best.pt --tta 10crop   # the paper's 10-crop test
    torchrun --nproc_per_node=4 train.py --data DIR      # 4 GPUs (or CPU processes) with DDP
    python train.py --epochs 1 --max-steps 5             # smoke test: 5 steps per epoch

Each run writes runs/<name>/: last.pt and best.pt (everything inference.py needs, plus optimiser
state for --resume), metrics.jsonl (one line per epoch), pictures (curves.png, filters.png,
predictions.png, confusion.png, and for in-memory and packed datasets neighbours.png, the paper's
Figure 4) and, for those datasets, a few validation images under samples/ to try inference.py on.
Ctrl-C (or SIGTERM) saves a resumable checkpoint and stops.

Data that fits in memory (everything but ImageNet-sized folders) is decoded once, kept on the
training device as uint8 and augmented there a batch at a time; larger folders are streamed, or
read from a packed copy decoded once (--loader packed, packs.py). Read main() first: each step it
calls is below it, then the loop and the validation. The settings (flags, recipes, --resume) are
train_settings.py's, what a run writes (its folder, checkpoints, pictures) run_files.py's, and the
work is done by the library modules (data_pipeline.py and folders.py for data, presets.py for
preprocessing, engine.py for the step and evaluation, schedule.py, checkpoints.py, run_log.py).
"""

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import train_settings
from alexnet import MODELS, AlexNet
from checkpoints import (
    INFERENCE_KEYS,
    check_same_classes,
    check_same_model,
    eval_preset,
    model_from_checkpoint,
    save_checkpoint,
    set_rng_states,
)
from data_pipeline import Data, DataConfig, load_data, stored_bytes
from display_text import displayable
from engine import (
    accuracy_counts,
    available_memory,
    configure_device,
    evaluate,
    first_on_rank_0,
    pick_precision,
    setup_distributed,
    train_step,
    training_memory,
)
from errors import CheckpointError, DataError
from plots import plot_curves
from presets import eval_transform, train_transform, tta_transform
from pretrained import imagenet_state_dict
from run_files import (
    Record,
    Run,
    Setup,
    StopSignal,
    Training,
    check_run_dir,
    checkpoint_state,
    disk_errors,
    drawing,
    new_run_dir,
    save_pictures,
    summarize,
)
from run_log import log_epoch, progress_bar, read_metrics, show_progress, tensorboard_writer
from schedule import Schedule, state_from_old_checkpoint
from speedups import fast_forward
from train_settings import TrainSettings, fit_workers, get_settings, resume_file
from worker_deaths import WorkerDiedError

T = TypeVar("T")  # whatever the batches are


def main(argv: list[str] | None = None) -> None:
    settings, resume, evaluated = get_settings(argv, __doc__)  # the flags, with what --resume or --evaluate bring

    # Device, seed, precision (after the settings: a resumed run's --deterministic and --amp count) ---
    setup = make_setup(settings)

    # Data (after checking, before it is allocated, that it fits and that the run can be written) ---
    fit_workers(settings.data)  # (no more than the CPUs there are)
    check_memory(settings, setup)
    if resume is None and evaluated is None and setup.rank == 0:
        check_run_dir(settings.out_dir, settings.name)
    data = load_data_or_exit(settings.data, setup)
    if evaluated is not None:  # --evaluate: one pass over the validation set, then stop
        evaluate_checkpoint(settings, evaluated, data, setup)
        return

    # Model (seeded here: the weights do not depend on what loading the data drew) ---------------
    seed_everything(settings.data.seed + setup.rank)  # dropout differs per process; DDP copies rank 0's weights
    model = build_model(settings, data, resume).to(setup.device, memory_format=setup.memory_format)
    forward = make_forward(model, setup, settings.compile)

    # Optimiser and schedule -------------------------------------------------------------------
    training = make_training(settings, setup, model, forward, data.train.num_batches())

    # Output: a new run directory (removed at a script's exit if no checkpoint came), or the interrupted run's ---
    with disk_errors(settings.out_dir):  # (samples/ are a new run's first files)
        script = __name__ == "__main__"  # (a notebook's or a test's process goes on after the run)
        run_dir = resume_file(settings.resume).parent if resume else new_run_dir(settings, setup, data, script)
    run, record = Run(settings, setup, data, run_dir, StopSignal()), Record()
    start_epoch, partial = restore(run, training, record, resume) if resume is not None else (1, None)
    record.writer = tensorboard_writer(run_dir) if settings.tensorboard and setup.rank == 0 else None
    run.log(f"Writing to {run_dir}/")

    # Loop (a full disk is one line; what was saved before stays) -------------------------------
    run.stop.install()
    with disk_errors(settings.out_dir, run_dir):
        for epoch in range(start_epoch, settings.epochs + 1):
            started = time.perf_counter() - (partial["seconds"] if partial else 0.0)  # an interrupted epoch counts
            train, stopped = train_one_epoch(run, training, epoch, partial, started)
            if stopped is not None:  # Ctrl-C or SIGTERM: save where the epoch stopped, and exit
                stop_mid_epoch(run, training, record, epoch, stopped)
            partial = None
            val = validate(run, forward, epoch)
            ema_val = validate(run, fast_forward(training.ema.module), epoch) if training.ema is not None else None
            finish_epoch(run, training, record, epoch, train, val, ema_val, started)
            if epoch < settings.epochs:
                stop_if_asked(run, epoch)

    # Summary ----------------------------------------------------------------------------------
    summarize(run, record)


def build_parser() -> argparse.ArgumentParser:
    """train.py's command line (train_settings.py), with this docstring as its --help's description."""
    return train_settings.build_parser(__doc__)


# ----------------------------------------------------------------------------------------------
# Set-up steps.


def make_setup(settings: TrainSettings) -> Setup:
    """torchrun's process group (if under torchrun), the precision, the backends' settings."""
    if settings.deterministic:  # cuBLAS reads it when it first runs: before anything touches the GPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        rank, world_size, device = setup_distributed(settings.device)
    except ValueError as error:
        raise SystemExit(f"error: --device {settings.device}: {displayable(error)}") from None
    memory_format = configure_device(device, settings.deterministic)
    return Setup(device, pick_precision(settings.amp, device), memory_format, rank, world_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_memory(settings: TrainSettings, setup: Setup) -> None:
    """One error line, before minutes of loading, for a run that cannot fit in memory."""
    config = settings.data
    size, batch_size = config.image_size, config.batch_size
    with torch.device("meta"):  # the parameter count, without the parameters
        parameters = sum(p.numel() for p in AlexNet(num_classes=1, **MODELS[settings.model]).parameters())
    data, training = stored_bytes(config), training_memory(parameters, batch_size, config.in_channels or 3, size)
    available = available_memory(setup.device)
    if available is not None and data + training > available:
        raise SystemExit(
            f"error: --image-size {size}: this run needs at least {gb(data + training)} of memory on {setup.device} "
            f"(the images {gb(data)}, the model and a batch of {batch_size} {gb(training)}) but {gb(available)} "
            "is available; lower --image-size, --batch-size or --train-size"
        )


def gb(size: int) -> str:
    return f"{size / 1e9:,.1f} GB"


@contextlib.contextmanager
def data_errors(config: DataConfig):
    """A DataError (loading, or an unreadable file found while streaming) as one line naming the flag
    (DataError.setting is the DataConfig field, named as its flag)."""
    try:
        yield
    except DataError as error:
        value = getattr(config, error.setting)
        shown = "" if value is None else f" {displayable(value)}"
        line = f"error: --{error.setting.replace('_', '-')}{shown}: {displayable(error)}"
        if error.setting == "dataset" and not config.download:
            line += "; add --download (needs network) or copy the files there"
        raise SystemExit(line) from None


def load_data_or_exit(config: DataConfig, setup: Setup) -> Data:
    """load_data with what it is doing said first and what it got said after."""
    log, device, rank, world_size = setup.log, setup.device, setup.rank, setup.world_size
    if config.source == "shapes":
        log(
            f"Training on the built-in shapes dataset (generated in code, {config.train_size} train / "
            f"{config.val_size} val images at {config.image_size}px)."
        )
        log(
            "For real data: --dataset mnist|fashion-mnist|cifar10|cifar100 [--download], or --data DIR "
            "(DIR/train/<class>/*, DIR/val/<class>/*). See python train.py --help."
        )
    else:
        log(f"Training on {config.data or f'{config.source} from {config.data_root}/'} at {config.image_size}px")
    start = time.perf_counter()
    with data_errors(config):
        try:  # rank 0 decodes, caches or packs image folders first; the others then read what it wrote
            data = first_on_rank_0(lambda: load_data(config, device, rank, world_size), rank, world_size)
        except KeyboardInterrupt:  # Ctrl-C while decoding or packing: what was packed stays for the next run
            raise SystemExit(130) from None
    precision = "fp32" if setup.amp_dtype is None else str(setup.amp_dtype).replace("torch.", "") + " autocast"
    log(
        f"{len(data.train)} training and {len(data.val)} validation images, {len(data.classes)} classes, "
        f"{data.preprocess.in_channels} channel(s), {data.train.kind}, "
        f"ready in {time.perf_counter() - start:.1f}s; device {device}"
        f"{f' x {world_size} processes' if world_size > 1 else ''}, {precision}"
    )
    return data


def evaluate_checkpoint(settings: TrainSettings, checkpoint: dict, data: Data, setup: Setup) -> None:
    """--evaluate: the checkpoint's validation loss, top-1 and top-5, with its own preprocessing."""
    model = model_from_checkpoint(checkpoint).to(setup.device, memory_format=setup.memory_format)
    try:
        check_same_classes(checkpoint, data.classes, Path(settings.evaluate))
    except CheckpointError as error:
        raise SystemExit(f"error: --evaluate {displayable(error)}; evaluate it on the data it was trained on") from None
    tta = settings.tta
    batches = validation_batches(data, eval_preset(checkpoint), setup.memory_format, settings.max_steps, tta)
    with data_errors(settings.data):
        val = evaluate(fast_forward(model), batches, setup.amp_dtype, len(data.classes), setup.world_size)
    crops = {"none": "centre crop", "flip": "centre crop and its mirror", "10crop": "10-crop"}[tta]
    setup.log(
        f"{settings.evaluate} ({crops}): validation loss {val['loss']:.3f} "
        f"top-1 {100 * val['top1']:.2f}% top-5 {100 * val['top5']:.2f}%"
    )
    row = {"checkpoint": str(settings.evaluate), "tta": tta, "val_loss": val["loss"], "val_top1": val["top1"]}
    setup.log(json.dumps({**row, "val_top5": val["top5"]}))
    if setup.world_size > 1:
        dist.destroy_process_group()


def build_model(settings: TrainSettings, data: Data, resume: dict | None) -> AlexNet:
    """A fresh AlexNet as the flags describe, or torchvision's ImageNet weights with a new last layer;
    when resuming, checked to be the checkpoint's model."""
    if settings.pretrained:
        try:
            weights = imagenet_state_dict()
        except CheckpointError as error:  # offline, or a damaged file in torch's cache
            raise SystemExit(f"error: --pretrained imagenet: {displayable(error)}") from None
        model = AlexNet.from_torchvision(weights, num_classes=len(data.classes), dropout=settings.dropout)
    else:
        channels = data.preprocess.in_channels
        options = {"dropout": settings.dropout, "init": settings.init, **MODELS[settings.model]}
        model = AlexNet(num_classes=len(data.classes), in_channels=channels, **options)
    if resume is not None:
        try:
            check_same_model(resume, model.config, resume_file(settings.resume))
            check_same_classes(resume, data.classes, resume_file(settings.resume))
        except CheckpointError as error:
            hint = "resume with the same data and model flags, or start a new run"
            raise SystemExit(f"error: --resume {displayable(error)}; {hint}") from None
    return model


def make_forward(model: AlexNet, setup: Setup, compile: bool) -> torch.nn.Module:
    """What computes the model: its measured speed-ups (speedups.py), averaged over the processes by
    DDP, compiled where asked. `model` stays the plain module, whose state_dict checkpoints hold."""
    forward = fast_forward(model)
    # DDP averages the gradients over the processes during backward (and starts them all from rank 0's weights).
    forward = torch.nn.parallel.DistributedDataParallel(forward) if setup.world_size > 1 else forward
    # torch.compile fuses the ReLUs, dropouts and casts into the matmuls and convolutions around them.
    return torch.compile(forward) if compile else forward


def make_training(
    settings: TrainSettings, setup: Setup, model: AlexNet, forward: torch.nn.Module, batches: int
) -> Training:
    """The optimiser, loss scaling, schedule and loss for `batches` training batches an epoch."""
    optimizer = make_optimizer(settings, model, setup.device)
    # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.amp_dtype == torch.float16)
    steps_per_epoch = min(batches, settings.max_steps or math.inf)
    schedule = make_schedule(settings, optimizer, steps_per_epoch)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    # PAPER: no weight averaging there. A copy of the model that follows its weights slowly (the
    # first update copies them); a cheap way to the accuracy of a lower learning rate.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema)) if settings.ema else None
    return Training(model, forward, optimizer, scaler, schedule, criterion, steps_per_epoch, ema)


def make_optimizer(settings: TrainSettings, model: AlexNet, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum, as in the paper. Fused: one kernel for the whole update of 58 M parameters
    (3x faster than a loop on CPU)."""
    fused = device.type in ("cpu", "cuda") or None
    options = {"momentum": settings.momentum, "nesterov": settings.nesterov, "weight_decay": settings.weight_decay}
    return torch.optim.SGD(model.parameters(), lr=settings.lr, fused=fused, **options)


def make_schedule(settings: TrainSettings, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Schedule:
    """The learning rate of every step, set in `optimizer` by PyTorch's schedulers (see schedule.py).
    PAPER: no warm-up there. A few hundred small steps let the randomly initialised network settle
    before the full learning rate; without it plain SGD on AlexNet often diverges or stalls."""
    s = settings
    options = {"lr_step": s.lr_step, "lr_gamma": s.lr_gamma, "patience": s.lr_patience}
    return Schedule(optimizer, s.schedule, s.lr, s.epochs, steps_per_epoch, s.warmup_steps, **options)


def restore(run: Run, training: Training, record: Record, resume: dict) -> tuple[int, dict | None]:
    """Load a checkpoint's state into the training and the record -> (first epoch to train, where an
    interrupted epoch stopped)."""
    settings, setup, resume_path = run.settings, run.setup, resume_file(run.settings.resume)
    batch_size = settings.data.batch_size
    old_world_size, old_batch_size = resume.get("world_size", 1), resume["args"]["batch_size"]
    partial = resume.get("partial")  # older runs: no partial
    # An interrupted epoch is resumed by its batch count, and one-cycle by its step count: both
    # mean something else under another global batch.
    old_batch, new_batch = old_world_size * old_batch_size, setup.world_size * batch_size
    if old_batch != new_batch and (partial is not None or settings.schedule == "onecycle"):
        why = "the run stopped mid-epoch" if partial is not None else "its one-cycle schedule counts steps"
        raise SystemExit(
            f"error: --resume {resume_path}: {why}, so it needs its global batch of {old_batch} "
            f"({old_world_size} process(es) of --batch-size {old_batch_size}), not {new_batch}"
        )
    training.model.load_state_dict(resume["model"])
    training.optimizer.load_state_dict(resume["optimizer"])
    # After the optimiser, whose rate it sets. Checkpoints written before the Schedule object held the
    # state dicts of PyTorch's schedulers instead.
    try:
        state = resume.get("schedule") or state_from_old_checkpoint(resume, settings.lr, settings.warmup_steps)
        training.schedule.load_state_dict(state)
    except CheckpointError as error:
        raise SystemExit(f"error: --resume {resume_path}: {displayable(error)}; start a new run") from None
    training.scaler.load_state_dict(resume["scaler"])
    record.best_top1, record.best_weights = resume["best_top1"], resume.get("best_weights", "model")
    if training.ema is not None and resume.get("ema") is not None:
        training.ema.load_state_dict(resume["ema"])
    elif training.ema is not None:
        run.log("note: that run kept no moving average (--ema): it starts now, from the current weights")
    if setup.rank == 0:  # other processes keep their own seeds: exact resumption is a single-process promise
        set_rng_states(resume["rng"], setup.device)
    start_epoch = resume["epoch"] + 1
    record.metrics = read_metrics(resume_path.parent / "metrics.jsonl", before_epoch=start_epoch)
    where = f", step {partial['batch'] + 1}" if partial else ""
    run.log(f"Resuming {resume_path} at epoch {start_epoch}{where}")
    if (old_world_size, old_batch_size) != (setup.world_size, batch_size):
        run.log(
            f"note: that run had {old_world_size} process(es) of batch {old_batch_size}, this one has "
            f"{setup.world_size} of batch {batch_size}: the global batch is now {new_batch}"
        )
    return start_epoch, partial


# ----------------------------------------------------------------------------------------------
# The loop.


@dataclass
class EpochTotals:
    """An epoch's running figures. The sums stay on the device (no host sync per step): loss, top-1
    hits, top-5 hits, and the first step whose loss was not finite (-1: none)."""

    sums: torch.Tensor
    seen: int = 0  # training images so far
    data_seconds: float = 0.0  # time the loop waited for the next batch
    synced: tuple[float, int] = (0.0, 0)  # the loss sum and `seen` at the last host sync

    def add(self, step: int, logits: torch.Tensor, loss: torch.Tensor, labels: torch.Tensor) -> None:
        sums = self.sums
        first_bad = torch.where((sums[3] < 0) & ~loss.isfinite(), step, sums[3])
        top1, top5 = accuracy_counts(logits, labels)
        self.sums = torch.stack([sums[0] + loss * len(labels), sums[1] + top1, sums[2] + top5, first_bad])
        self.seen += len(labels)


def train_one_epoch(
    run: Run, training: Training, epoch: int, partial: dict | None, started: float
) -> tuple[dict, dict | None]:
    """One pass over the training data, or what an interrupted one left -> (the epoch's training
    figures, None); or, when Ctrl-C or SIGTERM came or a data-loading worker died, ({}, where the epoch
    stopped) to be saved."""
    settings, setup, data = run.settings, run.setup, run.data
    seed = settings.data.seed * 1000 + epoch  # the epoch's order and augmentation
    training.model.train()
    totals = EpochTotals(torch.tensor([0.0, 0.0, 0.0, -1.0], device=setup.device, dtype=torch.float64))
    first_batch, lr = 0, training.schedule.lr()
    training.augment_rng.manual_seed(seed)
    if partial is not None:  # continue an interrupted epoch exactly where it stopped
        totals.sums = torch.tensor(partial["totals"], device=setup.device, dtype=torch.float64)
        totals.seen, totals.data_seconds = partial["seen"], partial.get("data_seconds", 0.0)
        totals.synced = (partial["totals"][0], partial["seen"])
        first_batch, lr = partial["batch"], partial["lr"]
        training.augment_rng.set_state(partial["augment_rng"])
    run.log(f"Epoch {epoch}/{settings.epochs}  lr {lr:.4g}")
    interactive = sys.stdout.isatty() and setup.rank == 0
    show_every = 10 if interactive else settings.log_interval  # reading the loss syncs with the device
    bar = progress_bar(training.steps_per_epoch, first_batch, interactive)
    died = []  # the line of a data-loading worker that died: the batches then end, between two steps
    batches = timed(until_a_worker_dies(data.train.batches(seed=seed, start=first_batch), died), totals)
    i = first_batch  # the last step done
    with data_errors(settings.data):  # a streamed folder finds its unreadable files as it reads them
        for i, (images, labels) in enumerate(batches, start=first_batch + 1):
            x = train_transform(images, data.augment, training.augment_rng, setup.memory_format, setup.rank,
                                setup.world_size)  # fmt: skip
            logits, loss = train_step(training.forward, training.criterion, training.optimizer, training.scaler, x,
                                      labels, setup.amp_dtype)  # fmt: skip
            training.schedule.after_step()  # the rate of the next step, set in the optimiser
            if training.ema is not None and training.schedule.step % settings.ema_every == 0:
                training.ema.update_parameters(training.model)
            totals.add(i, logits.detach(), loss.detach(), labels)
            shown = i % show_every == 0 or i == training.steps_per_epoch
            if shown or setup.world_size == 1 and run.stop.signal:
                check_progress(run, training, totals, epoch, i, bar if shown and setup.rank == 0 else None, started)
            last = i >= training.steps_per_epoch
            if (shown or setup.world_size == 1) and not last and run.stop.requested(setup.world_size, setup.device):
                bar.close()
                return {}, where_it_stopped(training, totals, i, lr, started)
            if last:
                break
    bar.close()
    if died:  # the steps before it are whole: saved as for Ctrl-C (stop_mid_epoch)
        return {}, {**where_it_stopped(training, totals, i, lr, started), "worker_died": died[0]}
    loss_sum, top1, top5 = totals.sums[:3].tolist()
    seconds = time.perf_counter() - started
    return {"loss": loss_sum / totals.seen, "top1": top1 / totals.seen, "top5": top5 / totals.seen, "lr": lr,
            "images_per_second": totals.seen * setup.world_size / seconds, "data_seconds": totals.data_seconds,
            "compute_seconds": seconds - totals.data_seconds}, None  # fmt: skip


def where_it_stopped(training: Training, totals: EpochTotals, step: int, lr: float, started: float) -> dict:
    """What a checkpoint keeps of an epoch stopped after `step` steps, to resume at the next ("partial")."""
    return {"batch": step, "totals": totals.sums.tolist(), "seen": totals.seen, "lr": lr,
            "augment_rng": training.augment_rng.get_state(), "data_seconds": totals.data_seconds,
            "seconds": time.perf_counter() - started}  # fmt: skip


def until_a_worker_dies(batches: Iterable[T], died: list[str]) -> Iterator[T]:
    """The batches, ending early where a data-loading worker died (worker_deaths.py raises that between two
    batches, never mid-step), with its line put in `died`."""
    try:
        yield from batches
    except WorkerDiedError as error:
        died.append(str(error))


def timed(batches, totals: EpochTotals):
    """The batches, with the time spent waiting for each added to totals.data_seconds: host time only
    (no device sync), which is when a GPU with nothing queued sits idle."""
    iterator = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        totals.data_seconds += time.perf_counter() - start
        yield batch


def check_progress(run: Run, training: Training, totals: EpochTotals, epoch: int, step: int, bar,
                   started: float) -> None:  # fmt: skip
    """At a host sync: stop on a non-finite loss or one past --divergence-limit times chance (each process
    judges its own batches: under torchrun the job ends with the first that stops), show the progress (on
    `bar`, if given), and warn once when the loss has sat at chance for a few hundred steps."""
    settings, classes = run.settings, len(run.data.classes)
    loss_sum, hits, _, bad_step = totals.sums.tolist()  # the only host sync of the loop
    if bad_step >= 0:
        diverged(run, epoch, int(bad_step), loss_sum / totals.seen)
    if bar is not None:
        show_progress(bar, step, loss_sum / totals.seen, hits / totals.seen, time.perf_counter() - started)
    window_loss, window_seen = loss_sum - totals.synced[0], totals.seen - totals.synced[1]
    totals.synced = (loss_sum, totals.seen)
    limit = settings.divergence_limit * math.log(classes)
    if window_seen and settings.divergence_limit > 0 and window_loss / window_seen > limit:
        diverged(run, epoch, step, window_loss / window_seen, limit=settings.divergence_limit)
    if window_seen and training.chance.far_above(window_loss / window_seen, classes):
        run.log(
            f"warning: the training loss is {window_loss / window_seen:.4g} at epoch {epoch}, step {step}, far above "
            f"chance (ln {classes} = {math.log(classes):.3f}): training is diverging; lower --lr "
            f"(now {settings.lr}) or raise --warmup-steps (now {settings.warmup_steps})"
        )
    if window_seen and training.chance.update(
        window_loss / window_seen, window_seen // settings.data.batch_size, classes
    ):
        run.log(
            f"warning: the training loss has stayed at chance (ln {classes} = {math.log(classes):.3f}) for "
            f"{training.chance.steps} steps: the network is not learning; lower --lr (now {settings.lr}), raise "
            f"--warmup-steps (now {settings.warmup_steps}) or use --init he"
        )


def stop_if_asked(run: Run, epoch: int) -> None:
    """After an epoch's checkpoint: stop (exit 130 or 143) if Ctrl-C or SIGTERM came during the epoch."""
    if run.stop.requested(run.setup.world_size, run.setup.device):
        run.log(
            f"{run.stop.name()}: stopped after epoch {epoch}; saved {run.run_dir / 'last.pt'}. "
            f"Resume with: python train.py --resume {run.run_dir}"
        )
        raise SystemExit(128 + run.stop.signal)


def diverged(run: Run, epoch: int, step: int, loss: float, which: str = "training", limit: float = 0.0) -> None:
    """Stop on a non-finite loss, or one past `limit` times chance (--divergence-limit), pointing at the last
    good checkpoint (never overwritten with the blown-up weights)."""
    last = run.run_dir / "last.pt"
    where = f"; the last good checkpoint is {last} (not overwritten)" if last.exists() else "; no checkpoint written"
    when = f"after epoch {epoch}" if which == "validation" else f"at epoch {epoch}, step {step}"
    became = f"reached {loss:.4g}, over --divergence-limit {limit:g} times chance," if limit else f"became {loss}"
    go_on = ", or --divergence-limit 0 to go on" if limit else ""
    raise SystemExit(
        f"error: the {which} loss {became} {when}{where}; "
        f"lower --lr (now {run.settings.lr}) or raise --warmup-steps (now {run.settings.warmup_steps}){go_on}"
    )


def stop_mid_epoch(run: Run, training: Training, record: Record, epoch: int, partial: dict) -> None:
    """Save a checkpoint that resumes at the next step of this epoch, and stop (exit 130 or 143; where a
    data-loading worker died, exit 1 with one line)."""
    died, last = partial.pop("worker_died", None), run.run_dir / "last.pt"
    if died and run.setup.world_size > 1:  # the other processes wait in an all-reduce: nothing can be saved now
        held = f"{last} holds the run up to epoch {epoch - 1}; go on with --resume {run.run_dir}"
        died = displayable(died)
        raise SystemExit(f"error: {died} in process {run.setup.rank}; {held if last.is_file() else 'nothing saved'}")
    if run.setup.rank == 0:
        save_checkpoint(checkpoint_state(run, training, record, epoch - 1, partial), last)
    if died:
        died = displayable(died)
        raise SystemExit(f"error: {died}; {last} holds the run up to epoch {epoch}, step {partial['batch']}; "
                         f"go on with --resume {run.run_dir}")  # fmt: skip
    run.log(
        f"{run.stop.name()}: stopped at epoch {epoch}, step {partial['batch']}/{training.steps_per_epoch}; "
        f"saved {run.run_dir / 'last.pt'}. Resume with: python train.py --resume {run.run_dir}"
    )
    raise SystemExit(128 + run.stop.signal)


def finish_epoch(
    run: Run, training: Training, record: Record, epoch: int, train: dict, val: dict, ema_val: dict | None,
    started: float,
) -> None:  # fmt: skip
    """The end of an epoch: the schedule, the metrics row and its line, the checkpoints, then the pictures (the
    curves each epoch, the others at the end: a picture that fails costs no checkpoint). `ema_val`: the
    validation of the weights' moving average (--ema), or None."""
    settings = run.settings
    if not math.isfinite(val["loss"]):  # the weights have blown up: keep the checkpoints of the last good epoch
        diverged(run, epoch, training.steps_per_epoch, val["loss"], "validation")
    training.schedule.end_epoch(val["top1"])
    row = {
        "epoch": epoch,
        "train_loss": train["loss"],
        "train_top1": train["top1"],
        "train_top5": train["top5"],
        "val_loss": val["loss"],
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        **({f"ema_val_{key}": ema_val[key] for key in ("loss", "top1", "top5")} if ema_val else {}),
        "lr": train["lr"],
        "epoch_seconds": time.perf_counter() - started,
        "images_per_second": train["images_per_second"],
        "data_seconds": train["data_seconds"],  # training waited for the next batch
        "compute_seconds": train["compute_seconds"],  # the rest of the training time
    }
    waiting = train["data_seconds"] / max(train["data_seconds"] + train["compute_seconds"], 1e-9)
    ema = f"EMA top-1 {100 * ema_val['top1']:.1f}%  |  " if ema_val else ""
    run.log(
        f"Epoch {epoch}/{settings.epochs}  train loss {row['train_loss']:.3f} top-1 {100 * row['train_top1']:.1f}%  |  "
        f"val loss {val['loss']:.3f} top-1 {100 * val['top1']:.1f}% top-5 {100 * val['top5']:.1f}%  |  {ema}"
        f"{row['epoch_seconds']:.0f}s  {row['images_per_second']:.0f} img/s, {100 * waiting:.0f}% waiting for data",
        flush=True,
    )
    if waiting > 0.2 and not record.warned_data:
        record.warned_data = True
        run.log(
            f"warning: training waited for data {100 * waiting:.0f}% of the time (the device sat idle then): "
            f"raise --workers (now {settings.data.workers}), keep the images in memory (--loader memory) if they fit, "
            "or read them from a packed copy (--loader packed) when streaming"
        )
    # best.pt holds the better of the weights and their average (the average wins a tie: it is smoother).
    best_weights = "ema" if ema_val and ema_val["top1"] >= val["top1"] else "model"
    top1 = ema_val["top1"] if best_weights == "ema" else val["top1"]
    improved = top1 > record.best_top1
    if improved:
        record.best_top1, record.best_weights = top1, best_weights
    if run.setup.rank != 0:  # rank 0 writes everything
        return
    log_epoch(run.run_dir, record.metrics, row, record.writer, curves=False)  # (curves.png after the checkpoints)
    state = checkpoint_state(run, training, record, epoch)
    save_checkpoint(state, run.run_dir / "last.pt")
    if improved:  # what inference needs, without the optimiser's momentum: half the size
        best = {key: state[key] for key in INFERENCE_KEYS}
        if best_weights == "ema":
            best["model"] = training.ema.module.state_dict()
        save_checkpoint({**best, "weights": best_weights}, run.run_dir / "best.pt")
    if settings.plots:
        with drawing(run, "curves.png"):
            plot_curves(record.metrics, run.run_dir / "curves.png")
    if settings.plots and (epoch == settings.epochs or run.stop.signal):  # the other pictures once, at the end
        save_pictures(run, training.model, val)


# ----------------------------------------------------------------------------------------------
# Validation.


def validation_batches(
    data: Data, preprocess, memory_format: torch.memory_format, max_steps: int | None, tta: str = "none"
):
    """Normalised validation batches (images, labels); with a --tta, (B, K, C, S, S): K views of each image."""
    for i, (images, labels) in enumerate(data.val.batches()):
        if max_steps and i >= max_steps:
            return
        if tta == "none":
            yield eval_transform(images, preprocess).contiguous(memory_format=memory_format), labels
        else:
            yield tta_transform(images, preprocess, tta), labels


def validate(run: Run, forward: torch.nn.Module, epoch: int) -> dict:
    """One pass over the validation set (evaluate's figures), as --tta and --max-steps say. A data-loading worker
    that dies here is one line naming the last checkpoint (this epoch's is not written yet)."""
    data, setup, settings = run.data, run.setup, run.settings
    batches = validation_batches(data, data.preprocess, setup.memory_format, settings.max_steps, settings.tta)
    with data_errors(settings.data):  # a streamed folder finds its unreadable files as it reads them
        try:
            return evaluate(forward, batches, setup.amp_dtype, len(data.classes), setup.world_size)
        except WorkerDiedError as error:
            last = run.run_dir / "last.pt"
            where = f" in process {setup.rank}" if setup.world_size > 1 else ""
            saved = (f"{last} holds the run up to epoch {epoch - 1}; go on with --resume {run.run_dir}"
                     if last.is_file() else "no checkpoint written yet; start the run again")  # fmt: skip
            raise SystemExit(f"error: {displayable(error)} while validating epoch {epoch}{where}; {saved}") from None


if __name__ == "__main__":
    main()
