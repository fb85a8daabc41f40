"""train.py's settings: every setting with its default (TrainSettings, and DataConfig for the data), the recipes,
the command line's flags in groups (reused by bench.py), which source wins (resolve_settings), the checks of what
is given and of what a checkpoint brings back (--resume, --evaluate), and the settings as checkpoints keep them.

    settings, resume, evaluated = get_settings(["--recipe", "cifar10", "--epochs", "3"])
    settings.lr, settings.data.batch_size       # 0.02 256: the recipe's, the data's in settings.data (DataConfig)

Flat settings (parsed flags, a checkpoint's "args") become a TrainSettings in one place, settings_from; a
checkpoint keeps them flat again (saved_settings), so that older and newer checkpoints read alike. The functions
named for the command line (get_settings and what it calls) exit with one "error: ..." line, as argparse does.
"""

import argparse
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from alexnet import INITS, MIN_INPUT_SIZE, MODELS, TORCHVISION_MIN_INPUT_SIZE
from checkpoints import read_checked_checkpoint
from data_pipeline import DATASETS, DEFAULT_IMAGE_SIZE, LOADERS, DataConfig, usable_cpus
from display_text import displayable, printable, shown
from engine import pick_device
from errors import CheckpointError
from packs import PACK_FORMATS
from presets import AUGMENTATIONS, IMAGENET_MEAN, IMAGENET_STD, TTA_MODES
from run_log import check_tensorboard
from schedule import SCHEDULES

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
# Folders given relative to where the run started: saved absolute, so --resume finds them from anywhere.
PATH_SETTINGS = ("data", "data_root", "pack_dir", "cache_dir")
# DataConfig's fields that no flag sets (--pretrained decides the normalisation).
NOT_FLAGS = ("normalization",)


@dataclass
class TrainSettings:
    """Every setting of a training run, with its default (the flags' defaults are these); the data's are
    DataConfig's, in `data`."""

    data: DataConfig = field(default_factory=DataConfig)
    recipe: str | None = None  # one of RECIPES: a preset of the settings below (explicit flags win)
    # The model.
    model: str = "default"  # one of alexnet.MODELS
    init: str = "he"  # one of alexnet.INITS
    dropout: float = 0.5  # on the two hidden fully connected layers
    pretrained: str | None = None  # "imagenet": fine-tune torchvision's weights
    # Optimisation (the batch size and the seed are the data's).
    epochs: int = 8
    lr: float = 0.01  # the peak learning rate
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    schedule: str = "step"  # one of schedule.SCHEDULES
    lr_step: int = 6  # step: epochs between two multiplications by lr_gamma
    lr_gamma: float = 0.1
    lr_patience: int = 4  # plateau: epochs without improvement before dividing by 10
    warmup_steps: int = 200
    ema: float | None = None  # the decay of the weights' moving average per update; None: no average
    ema_every: int = 1  # steps between two updates of the average
    # Evaluation.
    evaluate: str | None = None  # a checkpoint (or run directory) to evaluate, instead of training
    tta: str = "none"  # one of presets.TTA_MODES
    # Output.
    out_dir: str = "runs"
    name: str | None = None  # the run directory's name; None: <dataset>-<date>-<time>
    resume: str | None = None  # a last.pt (or run directory) to continue
    log_interval: int = 50
    tensorboard: bool = False
    plots: bool = True
    # Device and precision.
    device: str | torch.device = "auto"  # a torch.device once checked
    amp: str = "auto"  # "auto", "bf16", "fp16" or "off"
    deterministic: bool = False
    compile: bool = False
    # Smoke tests and safeguards.
    max_steps: int | None = None  # batches per epoch (training and validation); None: all
    divergence_limit: float = 100.0  # times chance (ln classes); 0: no limit


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with every default, and the description's examples as they are written."""


class SomeFlags:
    """An argument group that takes only the flags named: another script (bench.py) declares the train.py
    flags it uses with the same names, types, choices and words, from the functions below."""

    def __init__(self, group: argparse._ArgumentGroup, flags: set[str]) -> None:
        self.group, self.flags = group, flags

    def add_argument(self, *names: str, **options) -> None:
        if names[0] in self.flags:
            self.group.add_argument(*names, **options)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """train.py's command line: what a learner sets first (recipe, data, model, optimisation, evaluation,
    output), the operator's flags (device, loading, safeguards) last."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    defaults = TrainSettings()  # the flags' defaults are the dataclasses' (the data's: DataConfig's)
    parser.add_argument(
        "--recipe",
        default=defaults.recipe,
        choices=list(RECIPES),
        help="a preset of the flags below (explicit flags win): paper = the paper's network and recipe; "
        "cifar10 = CIFAR-10 to about 80%% in 18 epochs on 2 CPU cores (docs/performance.md)",
    )
    add_data_flags(parser.add_argument_group("data"), defaults)
    add_model_flags(parser.add_argument_group("model"), defaults)
    add_optimisation_flags(parser.add_argument_group("optimisation"), defaults)
    add_evaluation_flags(parser.add_argument_group("evaluation"), defaults)
    add_output_flags(parser.add_argument_group("output"), defaults)
    add_device_flags(parser.add_argument_group("device and precision (operator)"), defaults)
    add_loading_flags(parser.add_argument_group("loading image folders (operator)"), defaults)
    add_safeguard_flags(parser.add_argument_group("smoke tests and safeguards (operator)"), defaults)
    return parser


def add_data_flags(group: argparse._ArgumentGroup | SomeFlags, defaults: TrainSettings) -> None:
    """What the images are, and what is done to them."""
    data = defaults.data
    group.add_argument("--dataset", default=data.dataset, choices=DATASETS, help="built-in or torchvision dataset")
    group.add_argument(
        "--data",
        default=data.data,
        help="image folder in ImageNet layout: DIR/train/<class>/*, DIR/val/<class>/* (overrides --dataset)",
    )
    group.add_argument(
        "--data-root",
        default=data.data_root,
        help="where torchvision datasets and decoded-image caches are stored; --dataset imagenet: the folder holding "
        "ImageNet (Kaggle's download, the official archives, or train/<wnid>/ and val/<wnid>/)",
    )
    group.add_argument(
        "--download",
        action="store_true",
        default=data.download,
        help="download the torchvision dataset if it is missing (needs network)",
    )
    group.add_argument(
        "--image-size",
        type=int,
        default=None,  # (DataConfig works it out from the dataset)
        help=f"model input size; None: the dataset's, {DEFAULT_IMAGE_SIZE}",
    )
    group.add_argument(
        "--in-channels",
        type=int,
        default=data.in_channels,
        choices=[1, 3],
        help="None: the dataset's (MNIST 1, others 3)",
    )
    group.add_argument(
        "--train-size", type=int, default=data.train_size, help="built-in dataset: number of training images"
    )
    group.add_argument(
        "--val-size", type=int, default=data.val_size, help="built-in dataset: number of validation images"
    )
    group.add_argument(
        "--augment",
        default=data.augment,
        choices=AUGMENTATIONS,
        help="auto: pad-and-crop for small images (CIFAR, MNIST), random resized crops for photos; "
        "crop on photos: the paper's random 224 crops of 256; flips except MNIST",
    )
    group.add_argument(
        "--lighting",
        type=float,
        default=data.lighting,
        help="std of the paper's PCA lighting noise (the paper: 0.1; 0 = off)",
    )
    group.add_argument(
        "--lighting-pca",
        default=data.lighting_pca,
        choices=["imagenet", "data"],
        help="principal components for --lighting: ImageNet's (the paper's) or computed from the training images",
    )


def add_model_flags(group: argparse._ArgumentGroup | SomeFlags, defaults: TrainSettings) -> None:
    group.add_argument(
        "--model",
        default=defaults.model,
        choices=list(MODELS),
        help="default: the paper's layers without LRN and towers; paper: with them; torchvision: torchvision's variant",
    )
    group.add_argument(
        "--init",
        default=defaults.init,
        choices=INITS,
        help="weight init: he (trains reliably), paper (N(0, 0.01), unit biases: can stall), caffe (biases 0.1)",
    )
    group.add_argument("--dropout", type=float, default=defaults.dropout, help="dropout on the two hidden FC layers")
    group.add_argument(
        "--pretrained",
        default=defaults.pretrained,
        choices=["imagenet"],
        help="fine-tune from torchvision's ImageNet weights (torchvision layout, new last layer, ImageNet mean/std)",
    )


def add_optimisation_flags(group: argparse._ArgumentGroup | SomeFlags, defaults: TrainSettings) -> None:
    group.add_argument("--epochs", type=int, default=defaults.epochs, help="number of epochs")
    group.add_argument(
        "--batch-size",
        type=int,
        default=defaults.data.batch_size,  # PAPER: 128 there (--recipe paper); see DataConfig
        help="images per step per process (with torchrun the global batch is this times the number of processes)",
    )
    group.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    group.add_argument("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    group.add_argument("--nesterov", action="store_true", default=defaults.nesterov, help="Nesterov momentum")
    group.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="L2 weight decay")
    group.add_argument(
        "--label-smoothing", type=float, default=defaults.label_smoothing, help="cross-entropy label smoothing"
    )
    group.add_argument(
        "--schedule",
        default=defaults.schedule,
        choices=SCHEDULES,
        help="step: StepLR; onecycle: linear warm-up to --lr, then linear decay to zero; "
        "plateau: divide by 10 when validation top-1 stops improving (the paper)",
    )
    group.add_argument(
        "--lr-step",
        type=int,
        default=defaults.lr_step,
        help="step schedule: multiply the lr by --lr-gamma every this many epochs",
    )
    group.add_argument("--lr-gamma", type=float, default=defaults.lr_gamma, help="step schedule: StepLR factor")
    group.add_argument(
        "--lr-patience",
        type=int,
        default=defaults.lr_patience,
        help="plateau schedule: epochs without improvement before dividing the lr by 10",
    )
    group.add_argument(
        "--warmup-steps",
        type=int,
        default=defaults.warmup_steps,
        help="linear lr warm-up from lr/100 (lr/25 for onecycle) over this many steps",
    )
    group.add_argument(
        "--ema",
        type=float,
        default=defaults.ema,
        help="keep an exponential moving average of the weights with this decay per update (e.g. 0.999), "
        "validated every epoch beside them; best.pt takes whichever is better",
    )
    group.add_argument(
        "--ema-every",
        type=int,
        default=defaults.ema_every,
        help="with --ema: update the average every this many steps (each update reads all the weights)",
    )
    group.add_argument(
        "--seed", type=int, default=defaults.data.seed, help="random seed (data generation, init, order, augmentation)"
    )


def add_evaluation_flags(group: argparse._ArgumentGroup | SomeFlags, defaults: TrainSettings) -> None:
    group.add_argument(
        "--evaluate",
        default=defaults.evaluate,
        help="only evaluate this checkpoint (or run directory's best.pt) on the validation set",
    )
    group.add_argument(
        "--tta",
        default=defaults.tta,
        choices=TTA_MODES,
        help="test-time augmentation of --evaluate, or of every epoch's validation: flip = the centre crop and its "
        "mirror, 10crop = the paper's ten crops (corners, centre, mirrored); softmax averaged",
    )


def add_output_flags(group: argparse._ArgumentGroup | SomeFlags, defaults: TrainSettings) -> None:
    group.add_argument("--out-dir", default=defaults.out_dir, help="directory holding all runs")
    group.add_argument("--name", default=defaults.name, help="run name (None: <dataset>-<date>-<time>)")
    group.add_argument(
        "--resume",
        default=defaults.resume,
        help="checkpoint (last.pt) or run directory to continue from, with its settings",
    )
    group.add_argument(
        "--log-interval",
        type=int,
        default=defaults.log_interval,
        help="steps between progress lines (a progress bar on a terminal)",
    )
    group.add_argument(
        "--tensorboard",
        action="store_true",
        default=defaults.tensorboard,
        help="also write TensorBoard scalars into the run directory (needs the tensorboard package)",
    )
    group.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=defaults.plots,
        help="draw the pictures: curves.png every epoch, the filters, predictions, confusion matrix and nearest "
        "neighbours at the end (--no-plots: a few seconds less per run, metrics.jsonl alone)",
    )


def add_device_flags(group: argparse._ArgumentGroup | SomeFlags, defaults: TrainSettings) -> None:
    group.add_argument(
        "--device", default=defaults.device, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps"
    )
    group.add_argument(
        "--amp",
        default=defaults.amp,
        choices=["auto", "bf16", "fp16", "off"],
        help="mixed precision; auto: bf16 where it is fast (CUDA with bf16, CPUs with AVX-512 bf16/AMX), "
        "fp16 on older GPUs, else off",
    )
    group.add_argument(
        "--deterministic",
        action="store_true",
        default=defaults.deterministic,
        help="deterministic algorithms (cuDNN autotuning off, torch.use_deterministic_algorithms): "
        "a resumed CUDA run equals an uninterrupted one, at some cost in speed",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        default=defaults.compile,
        help="torch.compile the model (minutes of compilation; pays off on long GPU runs)",
    )


def add_loading_flags(group: argparse._ArgumentGroup | SomeFlags, defaults: TrainSettings) -> None:
    """How image folders are read: the loader, where decoded copies go, the workers, bad files."""
    data = defaults.data
    group.add_argument(
        "--loader",
        default=data.loader,
        choices=LOADERS,
        help="image folders: decode once and keep in memory; stream (decode every image every epoch, in "
        "DataLoader workers); or packed: decode once into a packed copy on disk (packs.py) and read that. "
        "auto: the packed copy if the folder has one, else memory if it fits in 8 GiB, else stream",
    )
    group.add_argument(
        "--pack-dir",
        default=data.pack_dir,
        help="where packed copies are written (put them on a fast disk); None: DATA_ROOT/packs",
    )
    group.add_argument(
        "--cache-dir",
        default=data.cache_dir,
        help="where image folders' decode cache is kept; None: DATA_ROOT/cache, or data/cache where that "
        "cannot be written",
    )
    group.add_argument(
        "--pack-format",
        default=data.pack_format,
        choices=PACK_FORMATS,
        help="packed copies as raw uint8 (196 KB an image at 256 px: fastest to read) or JPEG (~27 KB, decoded "
        "again every epoch)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=data.workers,
        help="image folders: processes that decode (caching, streaming, packing) and threads that read packs",
    )
    group.add_argument(
        "--max-bad-files",
        type=int,
        default=data.max_bad_files,
        help="unreadable image files to skip (with a warning) before refusing the folder",
    )
    group.add_argument(
        "--verify-pack",
        action="store_true",
        default=data.verify_pack,
        help="before using a packed copy or the decode cache, read every image file again and compare its contents "
        "with those packed (SHA-256): finds images changed without a change of name, size or modification time, "
        "which is all that is compared otherwise; costs a read of every file",
    )


def add_safeguard_flags(group: argparse._ArgumentGroup | SomeFlags, defaults: TrainSettings) -> None:
    group.add_argument(
        "--max-steps",
        type=int,
        default=defaults.max_steps,
        help="stop each epoch (training and validation) after this many batches: for smoke tests",
    )
    group.add_argument(
        "--divergence-limit",
        type=float,
        default=defaults.divergence_limit,
        help="stop (exit 1, keeping the last good checkpoint) once the training loss passes this many times chance, "
        "ln(classes), the loss of a network that has learned nothing: its steps are too large; 0: go on regardless",
    )


# ----------------------------------------------------------------------------------------------
# Which source wins, and the checks.

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
    | the parser's defaults (TrainSettings, DataConfig) | all                                            |
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


def bad_value(values: Mapping) -> str | None:
    """What is wrong with the flat settings (named as the flags), or None."""
    for dest, value in values.items():  # nan and inf pass float() but no check below
        if isinstance(value, float) and not math.isfinite(value):
            return f"--{dest.replace('_', '-')} must be a finite number, got {value}"
    at_least_1 = ("epochs", "batch_size", "train_size", "val_size", "lr_step", "log_interval", "lr_patience",
                  "ema_every")  # fmt: skip
    for flag in at_least_1:
        if values[flag] < 1:
            return f"--{flag.replace('_', '-')} must be at least 1, got {values[flag]}"
    if values["lr"] <= 0:
        return f"--lr must be positive, got {values['lr']}"
    for flag in ("workers", "warmup_steps", "max_bad_files", "weight_decay", "momentum", "lighting",
                 "divergence_limit"):  # fmt: skip
        if values[flag] < 0:
            return f"--{flag.replace('_', '-')} cannot be negative, got {values[flag]}"
    if values["max_steps"] is not None and values["max_steps"] < 1:
        return f"--max-steps must be at least 1, got {values['max_steps']}"
    model, size = values["model"], values["image_size"]
    smallest = TORCHVISION_MIN_INPUT_SIZE if model == "torchvision" or values["pretrained"] else MIN_INPUT_SIZE
    if size is not None and size < smallest:
        return f"--image-size must be at least {smallest} (the smallest input of the {model} model), got {size}"
    if values["ema"] is not None and not 0 < values["ema"] < 1:
        return f"--ema must be in (0, 1), e.g. 0.999, got {values['ema']}"
    if not 0 <= values["dropout"] < 1:
        return f"--dropout must be in [0, 1), got {values['dropout']}"
    if not 0 <= values["label_smoothing"] < 1:
        return f"--label-smoothing must be in [0, 1), got {values['label_smoothing']}"
    if values["data"] is not None and not (Path(values["data"]) / "train").is_dir():
        return f"--data {values['data']}: expected an image folder with train/<class>/ and val/<class>/ subfolders"
    if values["pretrained"] and model == "paper":
        return "--pretrained imagenet loads torchvision's layout; drop --model paper"
    if values["resume"] and values["evaluate"]:
        return "--resume and --evaluate do not go together"
    name = values["name"]
    if name is not None and (Path(name).name != name or name in ("", ".", "..")):
        return f"--name must be one folder name, without / or .., got {name!r} (--out-dir says where runs go)"
    return None


def settings_from(values: Mapping) -> TrainSettings:
    """Flat settings (parsed flags, resolve_settings' result) as a TrainSettings: the one place they are converted.
    The data's are taken by DataConfig's field names, with the normalisation --pretrained's weights expect."""
    names = {f.name for f in fields(TrainSettings)} - {"data"}
    normalization = (IMAGENET_MEAN, IMAGENET_STD) if values.get("pretrained") else None
    data = DataConfig.from_settings(values, normalization=normalization)
    return TrainSettings(data=data, **{key: value for key, value in values.items() if key in names})


def flat_settings(settings: TrainSettings) -> dict:
    """settings_from's inverse: every setting named as its flag, the data's among them."""
    flat = {f.name: getattr(settings.data, f.name) for f in fields(DataConfig) if f.name not in NOT_FLAGS}
    flat.update({f.name: getattr(settings, f.name) for f in fields(TrainSettings) if f.name != "data"})
    return flat


def saved_settings(settings: TrainSettings) -> dict:
    """The settings as a checkpoint keeps them ("args"): flat, the device as text, the data's folders absolute."""
    saved = {k: (str(v) if isinstance(v, torch.device) else v) for k, v in flat_settings(settings).items()}
    for key in PATH_SETTINGS:
        if saved.get(key) is not None:
            saved[key] = str(Path(saved[key]).absolute())
    return saved


def check_args(parser: argparse.ArgumentParser, values: dict) -> TrainSettings:
    """The settings, with the device picked; a bad value is one argparse error (exit status 2) naming the flag."""
    problem = bad_value(values)
    if problem:
        parser.error(problem)
    if values["tensorboard"]:
        try:
            check_tensorboard()
        except ImportError as error:
            parser.error(f"--tensorboard: {displayable(error)}")
    try:
        device = pick_device(values["device"])
    except ValueError as error:
        parser.error(f"--device {displayable(error)}")
    return settings_from({**values, "device": device})


def command_line_settings(argv: list[str] | None = None) -> TrainSettings:
    """The command line with --recipe applied, checked (get_settings adds what --resume and --evaluate bring)."""
    parser = build_parser()
    return check_args(parser, resolve_settings(*parse_command_line(parser, argv)))


def get_settings(
    argv: list[str] | None = None, description: str | None = None
) -> tuple[TrainSettings, dict | None, dict | None]:
    """(every setting, the checkpoint --resume names, the checkpoint --evaluate names): the command
    line checked, then what the checkpoints bring (resolve_settings decides who wins). `description`:
    what --help prints first (train.py's docstring)."""
    parser = build_parser(description)
    defaults, given = parse_command_line(parser, argv)
    command_line = check_args(parser, resolve_settings(defaults, given))
    resume_name, evaluate_name = command_line.resume, command_line.evaluate
    resume = read_resume(resume_name) if resume_name else None
    evaluated = read_checkpoint_or_exit(evaluate_name, "best.pt", "--evaluate") if evaluate_name else None
    if resume is not None:  # what a checkpoint brings is checked as the command line is: nothing read is trusted
        check_saved_settings(parser, resume["args"], given, resume_file(resume_name))
    values = resolve_settings(
        defaults, given, resume["args"] if resume else None, evaluated["preprocess"] if evaluated else None
    )
    refuse_bad_brought_values(values, given, resume_name, evaluate_name)
    if resume is not None:
        refuse_a_finished_run(resume, values["epochs"], resume_file(resume_name))
    return settings_from({**values, "device": command_line.device}), resume, evaluated


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
            raise SystemExit(f"error: {path}: saved setting {printable(str(key))} = {shown(value)} {why}; "
                             f"give {flag} to replace it, or start a new run")  # fmt: skip


def refuse_bad_brought_values(values: dict, given: dict, resume: str | None, evaluate: str | None) -> None:
    """bad_value on the settings with what --resume and --evaluate brought: one error line naming the checkpoint
    and the setting where a value the command line would refuse came from one."""
    evaluated = Path(evaluate) / "best.pt" if evaluate and Path(evaluate).is_dir() else evaluate
    if evaluated:
        for key in ("image_size", "in_channels"):
            value = values[key]
            if not isinstance(value, int) or isinstance(value, bool) or key == "in_channels" and value not in (1, 3):
                raise SystemExit(f"error: {evaluated}: saved preprocess {key} = {shown(value)} is not a usable "
                                 "input size or channel count; evaluate another checkpoint")  # fmt: skip
    problem = bad_value(values)
    if problem is None:
        return
    problem = displayable(problem)  # it may quote a value the checkpoint brought (its --data path)
    flag = problem.split()[0].split("=")[0] if problem.startswith("--") else ""
    key = flag[2:].replace("-", "_")
    value = shown(values.get(key))
    if evaluated and key in ("image_size", "in_channels"):
        raise SystemExit(f"error: {evaluated}: saved preprocess {key} = {value} is refused: {problem}; "
                         "evaluate another checkpoint")  # fmt: skip
    if resume and key in values and key not in given:
        raise SystemExit(f"error: {resume_file(resume)}: saved setting {key} = {value} is refused: {problem}; "
                         f"give {flag} to replace it, or start a new run")  # fmt: skip
    raise SystemExit(f"error: {problem} (with the settings of {displayable(resume or evaluate)})")


def fit_workers(data: DataConfig | argparse.Namespace) -> None:
    """--workers no higher than the CPUs this process may use, with one note: 200 decoding processes on 2 cores
    take gigabytes of memory and load a hundred times slower than 2 (and draw a warning from DataLoader)."""
    cpus = usable_cpus()
    if data.workers > cpus:
        if int(os.environ.get("RANK", "0")) == 0:  # (once under torchrun)
            print(f"note: --workers {data.workers} is more than the {cpus} CPU{'s' if cpus > 1 else ''} here; "
                  f"using {cpus}")  # fmt: skip
        data.workers = cpus


# ----------------------------------------------------------------------------------------------
# The checkpoints the command line names.


def read_checkpoint_or_exit(name: str, default_file: str, flag: str) -> dict:
    """A checkpoint (or a run directory's `default_file`), loaded safely (tensors and plain data only)
    and checked (its weights fit its model_config), or one error line naming the flag."""
    path = Path(name) / default_file if Path(name).is_dir() else Path(name)
    try:
        return read_checked_checkpoint(path)
    except CheckpointError as error:
        raise SystemExit(f"error: {flag} {displayable(error)}") from None


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
