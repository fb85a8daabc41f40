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
calls is below it, and the work is done by the library modules (data_pipeline.py and folders.py
for data, presets.py for preprocessing, engine.py for the step and evaluation, schedule.py,
checkpoints.py, run_log.py for what a run writes).
"""

import argparse
import atexit
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from alexnet import INITS, MIN_INPUT_SIZE, MODELS, TORCHVISION_MIN_INPUT_SIZE, AlexNet
from atomic_files import DiskFullError, out_of_space
from checkpoints import (
    INFERENCE_KEYS,
    check_same_classes,
    check_same_model,
    eval_preset,
    model_from_checkpoint,
    read_checked_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from data_pipeline import DATASETS, DEFAULT_IMAGE_SIZE, LOADERS, Data, DataConfig, load_data, stored_bytes, usable_cpus
from display_text import printable
from engine import (
    accuracy_counts,
    autocast,
    available_memory,
    configure_device,
    evaluate,
    first_on_rank_0,
    pick_device,
    pick_precision,
    setup_distributed,
    train_step,
    training_memory,
)
from errors import CheckpointError, DataError, first_sentence
from neighbours import nearest_training_images
from packs import PACK_FORMATS
from plots import plot_confusion, plot_curves, plot_filters, plot_neighbours, plot_predictions
from presets import (
    AUGMENTATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TTA_MODES,
    eval_transform,
    train_transform,
    tta_transform,
)
from pretrained import imagenet_state_dict
from run_log import (
    ChanceWatch,
    check_tensorboard,
    log_epoch,
    progress_bar,
    read_metrics,
    sample_indices,
    save_samples,
    show_progress,
    tensorboard_writer,
)
from schedule import SCHEDULES, Schedule, state_from_old_checkpoint
from speedups import fast_forward
from worker_deaths import WorkerDiedError

# The paper's recipe (section 5): SGD with momentum 0.9, weight decay 5e-4, batch 128, lr 0.01
# divided by 10 when the validation error stops improving, ~90 epochs; random 224 crops of the
# 256x256 image, flips and PCA lighting noise; the paper's network (LRN, two towers).
RECIPES = {
    "paper": {
        "model": "paper",
        "batch_size": 128,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "plateau",
        "epochs": 90,
        "augment": "crop",
        "lighting": 0.1,
        "dropout": 0.5,
    },
    # CIFAR-10 (--data DIR or --dataset cifar10) at 67 px, the smallest input of the paper's network:
    # 80.5% test top-1 (flip testing) after 18 epochs, 26.1 minutes from launch to exit on the 2-core Zen 4
    # machine (docs/performance.md). The 32 px images are padded by 4 and cropped, and flipped; one-cycle: a
    # warm-up of one epoch (195 steps), then down to 0.
    "cifar10": {
        "image_size": 67,
        "batch_size": 256,
        "epochs": 18,  # 14: 79.2% (twice), still underfitting; 18 fit in 30 minutes
        "lr": 0.02,
        "nesterov": True,
        "schedule": "onecycle",
        "warmup_steps": 195,
        "label_smoothing": 0.1,
        "dropout": 0.25,  # PAPER: 0.5; at 14 epochs +0.3 points centre, +0.8 with flips (0: the same as 0.25)
        "tta": "flip",  # every epoch's validation on the image and its mirror: +1.0 to +1.5 points
    },
}
# Settings --resume never takes from the checkpoint: this machine's and this command's choices.
NOT_RESUMED = {
    "resume",
    "evaluate",
    "device",
    "workers",
    "log_interval",
    "compile",
    "out_dir",
    "name",
    "tensorboard",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with every default, and the examples above as they are written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--recipe",
        default=None,
        choices=list(RECIPES),
        help="a preset of the flags below (explicit flags win): paper = the paper's network and recipe; "
        "cifar10 = CIFAR-10 to about 80%% in 18 epochs on 2 CPU cores (docs/performance.md)",
    )
    defaults = DataConfig()  # the library's defaults are the data flags' defaults
    add_data_flags(parser.add_argument_group("data"), defaults)
    add_loading_flags(parser.add_argument_group("loading"), defaults)
    add_model_flags(parser.add_argument_group("model"))
    add_optimisation_flags(parser.add_argument_group("optimisation"), defaults)
    add_run_flags(parser, defaults)
    return parser


def add_data_flags(group: argparse._ArgumentGroup, defaults: DataConfig) -> None:
    group.add_argument("--dataset", default=defaults.dataset, choices=DATASETS, help="built-in or torchvision dataset")
    group.add_argument(
        "--data",
        default=defaults.data,
        help="image folder in ImageNet layout: DIR/train/<class>/*, DIR/val/<class>/* (overrides --dataset)",
    )
    group.add_argument(
        "--data-root",
        default=defaults.data_root,
        help="where torchvision datasets and decoded-image caches are stored; --dataset imagenet: the folder holding "
        "ImageNet (Kaggle's download, the official archives, or train/<wnid>/ and val/<wnid>/)",
    )
    group.add_argument(
        "--download", action="store_true", help="download the torchvision dataset if it is missing (needs network)"
    )
    group.add_argument(
        "--image-size", type=int, default=None, help=f"model input size; default per dataset: {DEFAULT_IMAGE_SIZE}"
    )
    group.add_argument(
        "--in-channels", type=int, default=None, choices=[1, 3], help="default: from the dataset (MNIST 1, others 3)"
    )
    group.add_argument(
        "--train-size", type=int, default=defaults.train_size, help="built-in dataset: number of training images"
    )
    group.add_argument(
        "--val-size", type=int, default=defaults.val_size, help="built-in dataset: number of validation images"
    )
    group.add_argument(
        "--augment",
        default=defaults.augment,
        choices=AUGMENTATIONS,
        help="auto: pad-and-crop for small images (CIFAR, MNIST), random resized crops for photos; "
        "crop on photos: the paper's random 224 crops of 256; flips except MNIST",
    )
    group.add_argument(
        "--lighting",
        type=float,
        default=defaults.lighting,
        help="std of the paper's PCA lighting noise (the paper: 0.1; 0 = off)",
    )
    group.add_argument(
        "--lighting-pca",
        default=defaults.lighting_pca,
        choices=["imagenet", "data"],
        help="principal components for --lighting: ImageNet's (the paper's) or computed from the training images",
    )


def add_loading_flags(group: argparse._ArgumentGroup, defaults: DataConfig) -> None:
    """How image folders are read: the loader, where decoded copies go, the workers, bad files."""
    group.add_argument(
        "--loader",
        default=defaults.loader,
        choices=LOADERS,
        help="image folders: decode once and keep in memory; stream (decode every image every epoch, in "
        "DataLoader workers); or packed: decode once into a packed copy on disk (packs.py) and read that. "
        "auto: the packed copy if the folder has one, else memory if it fits in 8 GiB, else stream",
    )
    group.add_argument(
        "--pack-dir",
        default=defaults.pack_dir,
        help="where packed copies are written (put them on a fast disk); default: DATA_ROOT/packs",
    )
    group.add_argument(
        "--cache-dir",
        default=defaults.cache_dir,
        help="where image folders' decode cache is kept; default: DATA_ROOT/cache, or data/cache where that "
        "cannot be written",
    )
    group.add_argument(
        "--pack-format",
        default=defaults.pack_format,
        choices=PACK_FORMATS,
        help="packed copies as raw uint8 (196 KB an image at 256 px: fastest to read) or JPEG (~27 KB, decoded "
        "again every epoch)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="image folders: processes that decode (caching, streaming, packing) and threads that read packs",
    )
    group.add_argument(
        "--max-bad-files",
        type=int,
        default=defaults.max_bad_files,
        help="unreadable image files to skip (with a warning) before refusing the folder",
    )
    group.add_argument(
        "--verify-pack",
        action="store_true",
        help="before using a packed copy or the decode cache, read every image file again and compare its contents "
        "with those packed (SHA-256): finds images changed without a change of name, size or modification time, "
        "which is all that is compared otherwise; costs a read of every file",
    )


def add_model_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--model",
        default="default",
        choices=list(MODELS),
        help="default: the paper's layers without LRN and towers; paper: with them; torchvision: torchvision's variant",
    )
    group.add_argument(
        "--init",
        default="he",
        choices=INITS,
        help="weight init: he (trains reliably), paper (N(0, 0.01), unit biases: can stall), caffe (biases 0.1)",
    )
    group.add_argument("--dropout", type=float, default=0.5, help="dropout on the two hidden FC layers")
    group.add_argument(
        "--pretrained",
        default=None,
        choices=["imagenet"],
        help="fine-tune from torchvision's ImageNet weights (torchvision layout, new last layer, ImageNet mean/std)",
    )


def add_optimisation_flags(group: argparse._ArgumentGroup, defaults: DataConfig) -> None:
    group.add_argument("--epochs", type=int, default=8, help="number of epochs")
    group.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,  # PAPER: 128 there (--recipe paper); see DataConfig
        help="images per step per process (with torchrun the global batch is this times the number of processes)",
    )
    group.add_argument("--lr", type=float, default=0.01, help="peak learning rate")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    group.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    group.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    group.add_argument(
        "--schedule",
        default="step",
        choices=SCHEDULES,
        help="step: StepLR; onecycle: linear warm-up to --lr, then linear decay to zero; "
        "plateau: divide by 10 when validation top-1 stops improving (the paper)",
    )
    group.add_argument(
        "--lr-step", type=int, default=6, help="step schedule: multiply the lr by --lr-gamma every this many epochs"
    )
    group.add_argument("--lr-gamma", type=float, default=0.1, help="step schedule: StepLR factor")
    group.add_argument(
        "--lr-patience",
        type=int,
        default=4,
        help="plateau schedule: epochs without improvement before dividing the lr by 10",
    )
    group.add_argument(
        "--warmup-steps",
        type=int,
        default=200,
        help="linear lr warm-up from lr/100 (lr/25 for onecycle) over this many steps",
    )
    group.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop each epoch (training and validation) after this many batches: for smoke tests",
    )
    group.add_argument(
        "--divergence-limit",
        type=float,
        default=100.0,
        help="stop (exit 1, keeping the last good checkpoint) once the training loss passes this many times chance, "
        "ln(classes), the loss of a network that has learned nothing: its steps are too large; 0: go on regardless",
    )
    group.add_argument(
        "--ema",
        type=float,
        default=None,
        help="keep an exponential moving average of the weights with this decay per update (e.g. 0.999), "
        "validated every epoch beside them; best.pt takes whichever is better",
    )
    group.add_argument(
        "--ema-every",
        type=int,
        default=1,
        help="with --ema: update the average every this many steps (each update reads all the weights)",
    )


def add_run_flags(parser: argparse.ArgumentParser, defaults: DataConfig) -> None:
    group = parser.add_argument_group("device and precision")
    group.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    group.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "off"],
        help="mixed precision; auto: bf16 where it is fast (CUDA with bf16, CPUs with AVX-512 bf16/AMX), "
        "fp16 on older GPUs, else off",
    )
    group.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms (cuDNN autotuning off, torch.use_deterministic_algorithms): "
        "a resumed CUDA run equals an uninterrupted one, at some cost in speed",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (minutes of compilation; pays off on long GPU runs)",
    )
    group.add_argument(
        "--seed", type=int, default=defaults.seed, help="random seed (data generation, init, order, augmentation)"
    )
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--evaluate",
        default=None,
        help="only evaluate this checkpoint (or run directory's best.pt) on the validation set",
    )
    group.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation of --evaluate, or of every epoch's validation: flip = the centre crop and its "
        "mirror, 10crop = the paper's ten crops (corners, centre, mirrored); softmax averaged",
    )
    group = parser.add_argument_group("output")
    group.add_argument("--out-dir", default="runs", help="directory holding all runs")
    group.add_argument("--name", default=None, help="run name (default: <dataset>-<date>-<time>)")
    group.add_argument(
        "--resume", default=None, help="checkpoint (last.pt) or run directory to continue from, with its settings"
    )
    group.add_argument(
        "--log-interval", type=int, default=50, help="steps between progress lines (a progress bar on a terminal)"
    )
    group.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard scalars into the run directory (needs the tensorboard package)",
    )
    group.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the pictures: curves.png every epoch, the filters, predictions, confusion matrix and nearest "
        "neighbours at the end (--no-plots: a few seconds less per run, metrics.jsonl alone)",
    )


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with --recipe applied, checked (get_settings adds what --resume and --evaluate bring)."""
    parser = build_parser()
    return check_args(parser, resolve_settings(*parse_command_line(parser, argv)))


def get_settings(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None, dict | None]:
    """(every setting, the checkpoint --resume names, the checkpoint --evaluate names): the command
    line checked, then what the checkpoints bring (resolve_settings decides who wins)."""
    parser = build_parser()
    defaults, given = parse_command_line(parser, argv)
    args = check_args(parser, resolve_settings(defaults, given))
    resume = read_resume(args.resume) if args.resume else None
    evaluated = read_checkpoint_or_exit(args.evaluate, "best.pt", "--evaluate") if args.evaluate else None
    if resume is not None:  # what a checkpoint brings is checked as the command line is: nothing read is trusted
        check_saved_settings(parser, resume["args"], given, resume_file(args.resume))
    settings = resolve_settings(
        defaults, given, resume["args"] if resume else None, evaluated["preprocess"] if evaluated else None
    )
    refuse_bad_brought_values(settings, given, args)
    if resume is not None:
        refuse_a_finished_run(resume, settings["epochs"], resume_file(args.resume))
    return argparse.Namespace(**{**settings, "device": args.device}), resume, evaluated


def shown_value(value: object) -> str:
    """A value read from a checkpoint, for a message: its repr, escaped and cut short."""
    text = printable(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


def check_saved_settings(parser: argparse.ArgumentParser, saved: object, given: dict, path: Path) -> None:
    """One error line naming the checkpoint and the setting for a saved setting ("args") of a type or value its flag
    would not parse to (one given on the command line replaces it, and is not looked at); a note line for those
    this version does not know, which are ignored (older runs may hold settings that no longer exist)."""
    if not isinstance(saved, dict):
        raise SystemExit(f'error: {path}: saved settings ("args") are a {type(saved).__name__}, not a table of '
                         "settings; start a new run")  # fmt: skip
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    unknown = [printable(str(key)) for key in saved if key not in actions]
    if unknown:
        print(f"note: {path}: saved setting(s) that this version of train.py does not know, ignored: "
              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")  # fmt: skip
    for key, value in saved.items():
        if key not in actions or key in NOT_RESUMED or key in given:
            continue
        action = actions[key]
        kinds = (bool,) if action.nargs == 0 else {int: (int,), float: (int, float)}.get(action.type, (str,))
        fits = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        fits = fits or value is None and action.default is None
        why = "" if fits else f"is a {type(value).__name__}, not a {' or '.join(kind.__name__ for kind in kinds)}"
        if fits and action.choices is not None and value is not None and value not in action.choices:
            why = f"is not one of {', '.join(map(str, action.choices))}"
        if why:
            flag = action.option_strings[0]
            raise SystemExit(f"error: {path}: saved setting {printable(str(key))} = {shown_value(value)} {why}; "
                             f"give {flag} to replace it, or start a new run")  # fmt: skip


def refuse_bad_brought_values(settings: dict, given: dict, args: argparse.Namespace) -> None:
    """bad_value on the settings with what --resume and --evaluate brought: one error line naming the checkpoint
    and the setting where a value the command line would refuse came from one."""
    evaluated = Path(args.evaluate) / "best.pt" if args.evaluate and Path(args.evaluate).is_dir() else args.evaluate
    if evaluated:
        for key in ("image_size", "in_channels"):
            value = settings[key]
            if not isinstance(value, int) or isinstance(value, bool) or key == "in_channels" and value not in (1, 3):
                raise SystemExit(f"error: {evaluated}: saved preprocess {key} = {shown_value(value)} is not a usable "
                                 "input size or channel count; evaluate another checkpoint")  # fmt: skip
    problem = bad_value(argparse.Namespace(**settings))
    if problem is None:
        return
    flag = problem.split()[0].split("=")[0] if problem.startswith("--") else ""
    key = flag[2:].replace("-", "_")
    value = shown_value(settings.get(key))
    if evaluated and key in ("image_size", "in_channels"):
        raise SystemExit(f"error: {evaluated}: saved preprocess {key} = {value} is refused: {problem}; "
                         "evaluate another checkpoint")  # fmt: skip
    if args.resume and key in settings and key not in given:
        raise SystemExit(f"error: {resume_file(args.resume)}: saved setting {key} = {value} is refused: {problem}; "
                         f"give {flag} to replace it, or start a new run")  # fmt: skip
    raise SystemExit(f"error: {problem} (with the settings of {args.resume or args.evaluate})")


def check_args(parser: argparse.ArgumentParser, settings: dict) -> argparse.Namespace:
    """The settings as a namespace, with the device picked; a bad value is one argparse error (exit
    status 2) naming the flag."""
    args = argparse.Namespace(**settings)
    problem = bad_value(args)
    if problem:
        parser.error(problem)
    if args.tensorboard:
        try:
            check_tensorboard()
        except ImportError as error:
            parser.error(f"--tensorboard: {error}")
    try:
        args.device = pick_device(args.device)
    except ValueError as error:
        parser.error(f"--device {error}")
    return args


UNSET = object()  # marks the settings not given on the command line


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[dict, dict]:
    """(the parser's default of every setting, the settings given on the command line; argv None: sys.argv's)."""
    argv = sys.argv[1:] if argv is None else argv
    defaults = vars(parser.parse_args([]))
    # argparse fills in a default only where the namespace has no value yet: what stays UNSET was not given.
    parsed = vars(parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(defaults, UNSET))))
    return defaults, {key: value for key, value in parsed.items() if value is not UNSET}


def resolve_settings(defaults: dict, given: dict, resumed: dict | None = None, evaluated: dict | None = None) -> dict:
    """Every setting's value, decided here alone. Each source wins over those above it:

    | source                                            | the settings it gives                          |
    |---------------------------------------------------|------------------------------------------------|
    | the parser's defaults (DataConfig's for data)     | all                                            |
    | `--recipe NAME` (RECIPES)                         | the recipe's                                   |
    | the checkpoint of `--resume` (its "args")         | all but NOT_RESUMED (where and how to compute, |
    |                                                   | what to write: this machine's choice)          |
    | the command line                                  | those given (e.g. a larger --epochs)           |
    | the checkpoint of `--evaluate` (its "preprocess") | image_size, in_channels (the model's input)    |

    `defaults` and `given` come from parse_command_line; `resumed` is a checkpoint's "args" (a run
    that used --recipe stored its values there), `evaluated` a checkpoint's "preprocess".
    """
    settings = {**defaults, **RECIPES.get(given.get("recipe"), {})}
    if resumed is not None:  # older checkpoints may hold settings that no longer exist: skipped
        settings.update({k: v for k, v in resumed.items() if k in defaults and k not in NOT_RESUMED})
    settings.update(given)
    if evaluated is not None:  # e.g. an MNIST model evaluated on RGB folders: the data is converted
        settings.update(image_size=evaluated["image_size"], in_channels=evaluated["in_channels"])
    return settings


def bad_value(args: argparse.Namespace) -> str | None:
    """What is wrong with the parsed flags, or None."""
    for dest, value in vars(args).items():  # nan and inf pass float() but no check below
        if isinstance(value, float) and not math.isfinite(value):
            return f"--{dest.replace('_', '-')} must be a finite number, got {value}"
    at_least_1 = (
        "epochs",
        "batch_size",
        "train_size",
        "val_size",
        "lr_step",
        "log_interval",
        "lr_patience",
        "ema_every",
    )
    for flag in at_least_1:
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}"
    if args.lr <= 0:
        return f"--lr must be positive, got {args.lr}"
    for flag in ("workers", "warmup_steps", "max_bad_files", "weight_decay", "momentum", "lighting",
                 "divergence_limit"):  # fmt: skip
        if getattr(args, flag) < 0:
            return f"--{flag.replace('_', '-')} cannot be negative, got {getattr(args, flag)}"
    if args.max_steps is not None and args.max_steps < 1:
        return f"--max-steps must be at least 1, got {args.max_steps}"
    smallest = TORCHVISION_MIN_INPUT_SIZE if args.model == "torchvision" or args.pretrained else MIN_INPUT_SIZE
    if args.image_size is not None and args.image_size < smallest:
        model = args.model
        return (
            f"--image-size must be at least {smallest} (the smallest input of the {model} model), got {args.image_size}"
        )
    if args.ema is not None and not 0 < args.ema < 1:
        return f"--ema must be in (0, 1), e.g. 0.999, got {args.ema}"
    if not 0 <= args.dropout < 1:
        return f"--dropout must be in [0, 1), got {args.dropout}"
    if not 0 <= args.label_smoothing < 1:
        return f"--label-smoothing must be in [0, 1), got {args.label_smoothing}"
    if args.data is not None and not (Path(args.data) / "train").is_dir():
        return f"--data {args.data}: expected an image folder with train/<class>/ and val/<class>/ subfolders"
    if args.pretrained and args.model == "paper":
        return "--pretrained imagenet loads torchvision's layout; drop --model paper"
    if args.resume and args.evaluate:
        return "--resume and --evaluate do not go together"
    if args.name is not None and (Path(args.name).name != args.name or args.name in ("", ".", "..")):
        return f"--name must be one folder name, without / or .., got {args.name!r} (--out-dir says where runs go)"
    return None


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


@dataclass
class Run:
    """What a run is, start to end: its settings, where it computes, its data, its folder and its stop signal."""

    args: argparse.Namespace
    setup: Setup
    data: Data
    run_dir: Path
    stop: "StopSignal"

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


def main(argv: list[str] | None = None) -> None:
    args, resume, evaluated = get_settings(argv)  # the flags, with what --resume or --evaluate bring

    # Device, seed, precision (after the settings: a resumed run's --deterministic and --amp count) ---
    setup = make_setup(args)

    # Data (after checking, before it is allocated, that it fits and that the run can be written) ---
    config = data_config(args)
    check_before_loading(args, config, setup, new_run=resume is None and evaluated is None)
    data = load_data_or_exit(args, setup, config)
    if evaluated is not None:  # --evaluate: one pass over the validation set, then stop
        evaluate_checkpoint(args, evaluated, data, setup)
        return

    # Model (seeded here: the weights do not depend on what loading the data drew) ---------------
    seed_everything(args.seed + setup.rank)  # dropout differs per process; DDP copies rank 0's initial weights
    model = build_model(args, data, resume).to(setup.device, memory_format=setup.memory_format)
    forward = make_forward(model, setup, args.compile)

    # Optimiser and schedule -------------------------------------------------------------------
    training = make_training(args, setup, model, forward, data.train.num_batches())

    # Output: a new run directory, or the interrupted run's -------------------------------------
    with disk_errors(args):  # (samples/ are a new run's first files)
        run_dir = resume_file(args.resume).parent if resume is not None else new_run_dir(args, setup, data)
    run, record = Run(args, setup, data, run_dir, StopSignal()), Record()
    start_epoch, partial = restore(run, training, record, resume) if resume is not None else (1, None)
    record.writer = tensorboard_writer(run_dir) if args.tensorboard and setup.rank == 0 else None
    run.log(f"Writing to {run_dir}/")

    # Loop (a full disk is one line; what was saved before stays) -------------------------------
    run.stop.install()
    with disk_errors(args, run_dir):
        for epoch in range(start_epoch, args.epochs + 1):
            started = time.perf_counter() - (partial["seconds"] if partial else 0.0)  # an interrupted epoch counts
            train, stopped = train_one_epoch(run, training, epoch, partial, started)
            if stopped is not None:  # Ctrl-C or SIGTERM: save where the epoch stopped, and exit
                stop_mid_epoch(run, training, record, epoch, stopped)
            partial = None
            val = validate(run, forward)
            ema_val = validate(run, fast_forward(training.ema.module)) if training.ema is not None else None
            finish_epoch(run, training, record, epoch, train, val, ema_val, started)
            if epoch < args.epochs:
                stop_if_asked(run, epoch)

    # Summary ----------------------------------------------------------------------------------
    summarize(run, record)


# ----------------------------------------------------------------------------------------------
# Set-up steps.


def make_setup(args: argparse.Namespace) -> Setup:
    """torchrun's process group (if under torchrun), the precision, the backends' settings."""
    if args.deterministic:  # cuBLAS reads it when it first runs: before anything touches the GPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        rank, world_size, device = setup_distributed(args.device)
    except ValueError as error:
        raise SystemExit(f"error: --device {args.device}: {error}") from None
    memory_format = configure_device(device, args.deterministic)
    return Setup(device, pick_precision(args.amp, device), memory_format, rank, world_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_checkpoint_or_exit(name: str, default_file: str, flag: str) -> dict:
    """A checkpoint (or a run directory's `default_file`), loaded safely (tensors and plain data only)
    and checked (its weights fit its model_config), or one error line naming the flag."""
    path = Path(name) / default_file if Path(name).is_dir() else Path(name)
    try:
        return read_checked_checkpoint(path)
    except CheckpointError as error:
        raise SystemExit(f"error: {flag} {error}") from None


def resume_file(name: str) -> Path:
    """The checkpoint --resume names: a file, or a run directory's last.pt."""
    return Path(name) / "last.pt" if Path(name).is_dir() else Path(name)


def read_resume(name: str) -> dict:
    """The checkpoint --resume names (resolve_settings takes the run's settings from its "args")."""
    path, resume_path = Path(name), resume_file(name)
    if path.is_dir() and not resume_path.is_file():
        there = sorted(f"{p.name}/" if p.is_dir() else p.name for p in path.iterdir())
        hint = f"; --evaluate {path / 'best.pt'} or start a new run" if "best.pt" in there else "; start a new run"
        raise SystemExit(
            f"error: --resume {name}: this run directory has no last.pt (deleted, or the run stopped before "
            f"its first epoch ended); it holds {', '.join(there) or 'nothing'}{hint}"
        )
    if not resume_path.is_file():
        raise SystemExit(f"error: --resume {name}: no checkpoint there (expected a last.pt or a run directory)")
    resume = read_checkpoint_or_exit(str(resume_path), "last.pt", "--resume")
    if "optimizer" not in resume or "args" not in resume:
        raise SystemExit(f"error: --resume {resume_path}: holds weights only (best.pt); resume from last.pt")
    return resume


def refuse_a_finished_run(resume: dict, epochs: int, path: Path) -> None:
    """One line, before anything is loaded or written, when --resume names a run with nothing left to train."""
    done = resume.get("epoch", 0)
    if done >= epochs and resume.get("partial") is None:
        raise SystemExit(
            f"error: --resume {path}: that run has finished its {done} epoch(s); to train on, "
            f"add --epochs {done + 1} or more (--evaluate {path.parent / 'best.pt'} only evaluates it)"
        )


def data_config(args: argparse.Namespace) -> DataConfig:
    """The data settings, taken from the flags of the same names (--workers first cut to the CPUs there are)."""
    fit_workers(args)
    normalization = (IMAGENET_MEAN, IMAGENET_STD) if args.pretrained else None  # what the weights expect
    return DataConfig.from_settings(vars(args), normalization=normalization)


def fit_workers(args: argparse.Namespace) -> None:
    """--workers no higher than the CPUs this process may use, with one note: 200 decoding processes on 2 cores
    take gigabytes of memory and load a hundred times slower than 2 (and draw a warning from DataLoader)."""
    cpus = usable_cpus()
    if args.workers > cpus:
        if int(os.environ.get("RANK", "0")) == 0:  # (once under torchrun)
            print(f"note: --workers {args.workers} is more than the {cpus} CPU{'s' if cpus > 1 else ''} here; "
                  f"using {cpus}")  # fmt: skip
        args.workers = cpus


def check_before_loading(args: argparse.Namespace, config: DataConfig, setup: Setup, new_run: bool) -> None:
    """One error line, before minutes of loading, for a run that cannot fit in memory or cannot be written."""
    size = config.image_size
    with torch.device("meta"):  # the parameter count, without the parameters
        parameters = sum(p.numel() for p in AlexNet(num_classes=1, **MODELS[args.model]).parameters())
    data, training = stored_bytes(config), training_memory(parameters, args.batch_size, args.in_channels or 3, size)
    available = available_memory(setup.device)
    if available is not None and data + training > available:
        raise SystemExit(
            f"error: --image-size {size}: this run needs at least {gb(data + training)} of memory on {setup.device} "
            f"(the images {gb(data)}, the model and a batch of {args.batch_size} {gb(training)}) but {gb(available)} "
            "is available; lower --image-size, --batch-size or --train-size"
        )
    if not new_run or setup.rank != 0:
        return
    out_dir = Path(args.out_dir)
    nearest = next(path for path in (out_dir, *out_dir.parents) if path.exists())  # what already exists of it
    if not nearest.is_dir():
        raise SystemExit(f"error: --out-dir {out_dir}: {nearest} is a file, not a folder; choose another --out-dir")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise SystemExit(f"error: --out-dir {out_dir}: cannot write in {nearest} (permission denied)")
    if args.name and (out_dir / args.name).exists():
        raise SystemExit(f"error: run directory {out_dir / args.name} already exists; choose another --name "
                         f"or --resume {out_dir / args.name}")  # fmt: skip


def gb(size: int) -> str:
    return f"{size / 1e9:,.1f} GB"


@contextlib.contextmanager
def data_errors(args: argparse.Namespace):
    """A DataError (loading, or an unreadable file found while streaming) as one line naming the flag
    (DataError.setting is the DataConfig field, named as its flag)."""
    try:
        yield
    except DataError as error:
        value = getattr(args, error.setting)
        line = f"error: --{error.setting.replace('_', '-')}{'' if value is None else f' {value}'}: {error}"
        if error.setting == "dataset" and not args.download:
            line += "; add --download (needs network) or copy the files there"
        raise SystemExit(line) from None


@contextlib.contextmanager
def disk_errors(args: argparse.Namespace, run_dir: Path | None = None):
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
            where = f"{getattr(error, 'filename', None) or args.out_dir}: no space left on the disk; free some space"
        if run_dir is not None and (run_dir / "last.pt").is_file():
            where += f"; {run_dir / 'last.pt'} is intact: once there is room, go on with --resume {run_dir}"
        raise SystemExit(f"error: --out-dir {args.out_dir}: {where}") from None


def load_data_or_exit(args: argparse.Namespace, setup: Setup, config: DataConfig | None = None) -> Data:
    """load_data with what it is doing said first and what it got said after."""
    config, log = config or data_config(args), setup.log
    device, rank, world_size, amp_dtype = setup.device, setup.rank, setup.world_size, setup.amp_dtype
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
    with data_errors(args):
        try:  # rank 0 decodes, caches or packs image folders first; the others then read what it wrote
            data = first_on_rank_0(lambda: load_data(config, device, rank, world_size), rank, world_size)
        except KeyboardInterrupt:  # Ctrl-C while decoding or packing: what was packed stays for the next run
            raise SystemExit(130) from None
    precision = "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", "") + " autocast"
    log(
        f"{len(data.train)} training and {len(data.val)} validation images, {len(data.classes)} classes, "
        f"{data.preprocess.in_channels} channel(s), {data.train.kind}, "
        f"ready in {time.perf_counter() - start:.1f}s; device {device}"
        f"{f' x {world_size} processes' if world_size > 1 else ''}, {precision}"
    )
    return data


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


def validate(run: Run, forward: torch.nn.Module) -> dict:
    """One pass over the validation set (evaluate's figures), as --tta and --max-steps say."""
    data, setup, args = run.data, run.setup, run.args
    batches = validation_batches(data, data.preprocess, setup.memory_format, args.max_steps, args.tta)
    return evaluate(forward, batches, setup.amp_dtype, len(data.classes), setup.world_size)


def evaluate_checkpoint(args: argparse.Namespace, checkpoint: dict, data: Data, setup: Setup) -> None:
    """--evaluate: the checkpoint's validation loss, top-1 and top-5, with its own preprocessing."""
    model = model_from_checkpoint(checkpoint).to(setup.device, memory_format=setup.memory_format)
    try:
        check_same_classes(checkpoint, data.classes, Path(args.evaluate))
    except CheckpointError as error:
        raise SystemExit(f"error: --evaluate {error}; evaluate it on the data it was trained on") from None
    batches = validation_batches(data, eval_preset(checkpoint), setup.memory_format, args.max_steps, args.tta)
    with data_errors(args):
        val = evaluate(fast_forward(model), batches, setup.amp_dtype, len(data.classes), setup.world_size)
    crops = {"none": "centre crop", "flip": "centre crop and its mirror", "10crop": "10-crop"}[args.tta]
    setup.log(
        f"{args.evaluate} ({crops}): validation loss {val['loss']:.3f} "
        f"top-1 {100 * val['top1']:.2f}% top-5 {100 * val['top5']:.2f}%"
    )
    row = {"checkpoint": str(args.evaluate), "tta": args.tta, "val_loss": val["loss"], "val_top1": val["top1"]}
    setup.log(json.dumps({**row, "val_top5": val["top5"]}))
    if setup.world_size > 1:
        dist.destroy_process_group()


def build_model(args: argparse.Namespace, data: Data, resume: dict | None) -> AlexNet:
    """A fresh AlexNet as the flags describe, or torchvision's ImageNet weights with a new last layer;
    when resuming, checked to be the checkpoint's model."""
    if args.pretrained:
        try:
            weights = imagenet_state_dict()
        except CheckpointError as error:  # offline, or a damaged file in torch's cache
            raise SystemExit(f"error: --pretrained imagenet: {error}") from None
        model = AlexNet.from_torchvision(weights, num_classes=len(data.classes), dropout=args.dropout)
    else:
        channels = data.preprocess.in_channels
        options = {"dropout": args.dropout, "init": args.init, **MODELS[args.model]}
        model = AlexNet(num_classes=len(data.classes), in_channels=channels, **options)
    if resume is not None:
        try:
            check_same_model(resume, model.config, resume_file(args.resume))
            check_same_classes(resume, data.classes, resume_file(args.resume))
        except CheckpointError as error:
            hint = "resume with the same data and model flags, or start a new run"
            raise SystemExit(f"error: --resume {error}; {hint}") from None
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
    args: argparse.Namespace, setup: Setup, model: AlexNet, forward: torch.nn.Module, batches: int
) -> Training:
    """The optimiser, loss scaling, schedule and loss for `batches` training batches an epoch."""
    optimizer = make_optimizer(args, model, setup.device)
    # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.amp_dtype == torch.float16)
    steps_per_epoch = min(batches, args.max_steps or math.inf)
    schedule = make_schedule(args, optimizer, steps_per_epoch)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    # PAPER: no weight averaging there. A copy of the model that follows its weights slowly (the
    # first update copies them); a cheap way to the accuracy of a lower learning rate.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema)) if args.ema else None
    return Training(model, forward, optimizer, scaler, schedule, criterion, steps_per_epoch, ema)


def make_optimizer(args: argparse.Namespace, model: AlexNet, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum, as in the paper. Fused: one kernel for the whole update of 58 M parameters
    (3x faster than a loop on CPU)."""
    fused = device.type in ("cpu", "cuda") or None
    options = {"momentum": args.momentum, "nesterov": args.nesterov, "weight_decay": args.weight_decay}
    return torch.optim.SGD(model.parameters(), lr=args.lr, fused=fused, **options)


def make_schedule(args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Schedule:
    """The learning rate of every step, set in `optimizer` by PyTorch's schedulers (see schedule.py).
    PAPER: no warm-up there. A few hundred small steps let the randomly initialised network settle
    before the full learning rate; without it plain SGD on AlexNet often diverges or stalls."""
    options = {"lr_step": args.lr_step, "lr_gamma": args.lr_gamma, "patience": args.lr_patience}
    return Schedule(optimizer, args.schedule, args.lr, args.epochs, steps_per_epoch, args.warmup_steps, **options)


def restore(run: Run, training: Training, record: Record, resume: dict) -> tuple[int, dict | None]:
    """Load a checkpoint's state into the training and the record -> (first epoch to train, where an
    interrupted epoch stopped)."""
    args, setup, resume_path = run.args, run.setup, resume_file(run.args.resume)
    old_world_size, old_batch_size = resume.get("world_size", 1), resume["args"]["batch_size"]
    partial = resume.get("partial")  # older runs: no partial
    # An interrupted epoch is resumed by its batch count, and one-cycle by its step count: both
    # mean something else under another global batch.
    old_batch, new_batch = old_world_size * old_batch_size, setup.world_size * args.batch_size
    if old_batch != new_batch and (partial is not None or args.schedule == "onecycle"):
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
        state = resume.get("schedule") or state_from_old_checkpoint(resume, args.lr, args.warmup_steps)
        training.schedule.load_state_dict(state)
    except CheckpointError as error:
        raise SystemExit(f"error: --resume {resume_path}: {error}; start a new run") from None
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
    if (old_world_size, old_batch_size) != (setup.world_size, args.batch_size):
        run.log(
            f"note: that run had {old_world_size} process(es) of batch {old_batch_size}, this one has "
            f"{setup.world_size} of batch {args.batch_size}: the global batch is now {new_batch}"
        )
    return start_epoch, partial


def new_run_dir(args: argparse.Namespace, setup: Setup, data: Data) -> Path:
    """runs/<name>/, created by rank 0; an existing one is never reused. Without --name, a run started
    in the same second as another gets the next free suffix (-2, -3, ...)."""
    source = Path(args.data).resolve().name if args.data else args.dataset
    run_dir = Path(args.out_dir) / (args.name or f"{source}-{time.strftime('%Y%m%d-%H%M%S')}")
    if setup.world_size > 1:  # every process needs rank 0's choice of name
        names = [run_dir.name if setup.rank == 0 else None]
        if setup.rank == 0:
            run_dir = make_run_dir(run_dir, args.name is not None)
            names = [run_dir.name]
        dist.broadcast_object_list(names, src=0)
        run_dir = run_dir.with_name(names[0])
    else:
        run_dir = make_run_dir(run_dir, args.name is not None)
    if setup.rank == 0 and data.val.random_access:  # images at hand, without decoding files
        images, labels = data.val.take(sample_indices(8, len(data.val)))
        save_samples(images, labels, data.classes, run_dir / "samples")
    return run_dir


def make_run_dir(run_dir: Path, named: bool) -> Path:
    """Create run_dir (mkdir, which two processes cannot both win), or run_dir-2, -3, ... when not `named`.
    As a script, the folder is removed again at exit if the run stopped before its first checkpoint
    (remove_unsaved_run): a failed start does not leave a folder that refuses the same --name next time."""
    for attempt in range(1, 100):
        candidate = run_dir if attempt == 1 else run_dir.with_name(f"{run_dir.name}-{attempt}")
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            if __name__ == "__main__":  # not in a notebook or a test, whose process goes on after the run
                atexit.register(remove_unsaved_run, candidate, candidate.stat(), os.getpid(), named)
            return candidate
        except FileExistsError:
            if named:
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


# ----------------------------------------------------------------------------------------------
# The loop.


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
    args, setup, data = run.args, run.setup, run.data
    training.model.train()
    totals = EpochTotals(torch.tensor([0.0, 0.0, 0.0, -1.0], device=setup.device, dtype=torch.float64))
    first_batch, lr = 0, training.schedule.lr()
    training.augment_rng.manual_seed(args.seed * 1000 + epoch)
    if partial is not None:  # continue an interrupted epoch exactly where it stopped
        totals.sums = torch.tensor(partial["totals"], device=setup.device, dtype=torch.float64)
        totals.seen, totals.data_seconds = partial["seen"], partial.get("data_seconds", 0.0)
        totals.synced = (partial["totals"][0], partial["seen"])
        first_batch, lr = partial["batch"], partial["lr"]
        training.augment_rng.set_state(partial["augment_rng"])
    run.log(f"Epoch {epoch}/{args.epochs}  lr {lr:.4g}")
    interactive = sys.stdout.isatty() and setup.rank == 0
    show_every = 10 if interactive else args.log_interval  # reading the loss syncs with the device
    bar = progress_bar(training.steps_per_epoch, first_batch, interactive)
    died = []  # the line of a data-loading worker that died: the batches then end, between two steps
    batches = timed(until_a_worker_dies(data.train.batches(seed=args.seed * 1000 + epoch, start=first_batch), died),
                    totals)  # fmt: skip
    i = first_batch  # the last step done
    with data_errors(args):  # a streamed folder finds its unreadable files as it reads them
        for i, (images, labels) in enumerate(batches, start=first_batch + 1):
            x = train_transform(images, data.augment, training.augment_rng, setup.memory_format, setup.rank,
                                setup.world_size)  # fmt: skip
            logits, loss = train_step(training.forward, training.criterion, training.optimizer, training.scaler, x,
                                      labels, setup.amp_dtype)  # fmt: skip
            training.schedule.after_step()  # the rate of the next step, set in the optimiser
            if training.ema is not None and training.schedule.step % args.ema_every == 0:
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


def until_a_worker_dies(batches, died: list[str]):
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
    args, classes = run.args, len(run.data.classes)
    loss_sum, hits, _, bad_step = totals.sums.tolist()  # the only host sync of the loop
    if bad_step >= 0:
        diverged(run, epoch, int(bad_step), loss_sum / totals.seen)
    if bar is not None:
        show_progress(bar, step, loss_sum / totals.seen, hits / totals.seen, time.perf_counter() - started)
    window_loss, window_seen = loss_sum - totals.synced[0], totals.seen - totals.synced[1]
    totals.synced = (loss_sum, totals.seen)
    limit = args.divergence_limit * math.log(classes)
    if window_seen and args.divergence_limit > 0 and window_loss / window_seen > limit:
        diverged(run, epoch, step, window_loss / window_seen, limit=args.divergence_limit)
    if window_seen and training.chance.far_above(window_loss / window_seen, classes):
        run.log(
            f"warning: the training loss is {window_loss / window_seen:.4g} at epoch {epoch}, step {step}, far above "
            f"chance (ln {classes} = {math.log(classes):.3f}): training is diverging; lower --lr (now {args.lr}) or "
            f"raise --warmup-steps (now {args.warmup_steps})"
        )
    if window_seen and training.chance.update(window_loss / window_seen, window_seen // args.batch_size, classes):
        run.log(
            f"warning: the training loss has stayed at chance (ln {classes} = {math.log(classes):.3f}) for "
            f"{training.chance.steps} steps: the network is not learning; lower --lr (now {args.lr}), raise "
            f"--warmup-steps (now {args.warmup_steps}) or use --init he"
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
        f"lower --lr (now {run.args.lr}) or raise --warmup-steps (now {run.args.warmup_steps}){go_on}"
    )


def stop_mid_epoch(run: Run, training: Training, record: Record, epoch: int, partial: dict) -> None:
    """Save a checkpoint that resumes at the next step of this epoch, and stop (exit 130 or 143; where a
    data-loading worker died, exit 1 with one line)."""
    died, last = partial.pop("worker_died", None), run.run_dir / "last.pt"
    if died and run.setup.world_size > 1:  # the other processes wait in an all-reduce: nothing can be saved now
        held = f"{last} holds the run up to epoch {epoch - 1}; go on with --resume {run.run_dir}"
        raise SystemExit(f"error: {died} in process {run.setup.rank}; {held if last.is_file() else 'nothing saved'}")
    if run.setup.rank == 0:
        save_checkpoint(checkpoint_state(run, training, record, epoch - 1, partial), last)
    if died:
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
    args = run.args
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
        f"Epoch {epoch}/{args.epochs}  train loss {row['train_loss']:.3f} top-1 {100 * row['train_top1']:.1f}%  |  "
        f"val loss {val['loss']:.3f} top-1 {100 * val['top1']:.1f}% top-5 {100 * val['top5']:.1f}%  |  {ema}"
        f"{row['epoch_seconds']:.0f}s  {row['images_per_second']:.0f} img/s, {100 * waiting:.0f}% waiting for data",
        flush=True,
    )
    if waiting > 0.2 and not record.warned_data:
        record.warned_data = True
        run.log(
            f"warning: training waited for data {100 * waiting:.0f}% of the time (the device sat idle then): "
            f"raise --workers (now {args.workers}), keep the images in memory (--loader memory) if they fit, "
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
    if args.plots:
        with drawing(run, "curves.png"):
            plot_curves(record.metrics, run.run_dir / "curves.png")
    if args.plots and (epoch == args.epochs or run.stop.signal):  # the other pictures once, at the end
        save_pictures(run, training.model, val)


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
        "args": saved_settings(run.args),
        "rng": rng_states(run.setup.device),
    }


# Folders given relative to where the run started: saved absolute, so --resume finds them from anywhere.
PATH_SETTINGS = ("data", "data_root", "pack_dir", "cache_dir")


def saved_settings(args: argparse.Namespace) -> dict:
    """The settings as a checkpoint keeps them: the device as text, the data's folders absolute."""
    settings = {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()}
    for key in PATH_SETTINGS:
        if settings.get(key) is not None:
            settings[key] = str(Path(settings[key]).absolute())
    return settings


@contextlib.contextmanager
def drawing(run: Run, name: str):
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
        search = {"k": 6, "max_images": NEIGHBOUR_SEARCH, "batch_size": run.args.batch_size}
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


if __name__ == "__main__":
    main()
