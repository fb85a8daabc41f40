"""Train AlexNet on the built-in shapes dataset, MNIST, Fashion-MNIST, CIFAR or an image folder.

Examples:
    python train.py                                      # built-in shapes, offline, ~5 min on 2 CPU cores
    python train.py --dataset mnist --download           # torchvision datasets live under data/
    python train.py --data /path/to/imagenet --recipe paper   # the paper's network and recipe
    python train.py --data ../shared/data/cifar10 --image-size 67 --batch-size 256 --epochs 14 \\
        --lr 0.02 --nesterov --schedule onecycle --warmup-steps 195 --label-smoothing 0.1
                                                         # CIFAR-10 to 77% in 27 min on 2 CPU cores
    python train.py --data ../shared/data/hymenoptera --pretrained imagenet --epochs 5   # fine-tune
    python train.py --resume runs/shapes-20261122-101500 # continue a run (its last.pt), same settings
    python train.py --data DIR --evaluate runs/x/best.pt --tta 10crop   # the paper's 10-crop test
    torchrun --nproc_per_node=4 train.py --data DIR      # 4 GPUs (or CPU processes) with DDP
    python train.py --epochs 1 --max-steps 5             # smoke test: 5 steps per epoch

Each run writes runs/<name>/: last.pt and best.pt (everything inference.py needs, plus optimiser
state for --resume), metrics.jsonl (one line per epoch), pictures (curves.png, filters.png,
predictions.png, confusion.png) and, for in-memory datasets, a few validation images under
samples/ to try inference.py on. Ctrl-C (or SIGTERM) saves a resumable checkpoint and stops.

Data that fits in memory (everything but ImageNet-sized folders) is decoded once, kept on the
training device as uint8 and augmented there a batch at a time: see data_pipeline.py.
"""

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from alexnet import INITS, MIN_INPUT_SIZE, TORCHVISION_MIN_INPUT_SIZE, AlexNet
from data_pipeline import AUGMENTATIONS, DATASETS, DEFAULT_IMAGE_SIZE, InMemory, load_data, save_atomically, train_transform_batch
from inference import (IMAGENET_PREPROCESS, TTA_MODES, CheckpointError, class_log_probabilities, eval_transform, imagenet_state_dict,
                       read_checked_checkpoint, ten_crop_transform)
from plots import plot_confusion, plot_curves, plot_filters, plot_predictions

# The paper's recipe (section 5): SGD with momentum 0.9, weight decay 5e-4, batch 128, lr 0.01
# divided by 10 when the validation error stops improving, ~90 epochs; random 224 crops of the
# 256x256 image, flips and PCA lighting noise; the paper's network (LRN, two towers).
RECIPES = {
    "paper": {"model": "paper", "batch_size": 128, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "plateau",
              "epochs": 90, "augment": "crop", "lighting": 0.1, "dropout": 0.5},
}
MODELS = {"default": {}, "paper": {"lrn": True, "groups": 2}, "torchvision": {"layout": "torchvision"}}
# What best.pt keeps of a checkpoint (last.pt has everything, for --resume).
INFERENCE_KEYS = ("model", "model_config", "classes", "preprocess", "epoch", "best_top1", "world_size", "args")
# Settings that --resume takes from the checkpoint unless given again on the command line.
NOT_RESUMED = {"resume", "evaluate", "device", "workers", "log_interval", "compile", "loader", "data_root", "out_dir", "name", "tta"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--recipe", default=None, choices=list(RECIPES), help="a preset of the flags below (explicit flags win): paper = the paper's network and recipe")
    # data
    parser.add_argument("--dataset", default="shapes", choices=DATASETS, help="built-in or torchvision dataset")
    parser.add_argument("--data", default=None, help="image folder in ImageNet layout: DIR/train/<class>/*, DIR/val/<class>/* (overrides --dataset)")
    parser.add_argument("--data-root", default="data", help="where torchvision datasets and decoded-image caches are stored")
    parser.add_argument("--download", action="store_true", help="download the torchvision dataset if it is missing (needs network)")
    parser.add_argument("--image-size", type=int, default=None, help=f"model input size; default per dataset: {DEFAULT_IMAGE_SIZE}")
    parser.add_argument("--in-channels", type=int, default=None, choices=[1, 3], help="default: from the dataset (MNIST 1, others 3)")
    parser.add_argument("--train-size", type=int, default=12000, help="built-in dataset: number of training images")
    parser.add_argument("--val-size", type=int, default=2000, help="built-in dataset: number of validation images")
    parser.add_argument("--augment", default="auto", choices=AUGMENTATIONS, help="auto: pad-and-crop for small images (CIFAR, MNIST), random resized crops for photos; crop on photos: the paper's random 224 crops of 256; flips except MNIST")
    parser.add_argument("--lighting", type=float, default=0.0, help="std of the paper's PCA lighting noise (the paper: 0.1; 0 = off)")
    parser.add_argument("--lighting-pca", default="imagenet", choices=["imagenet", "data"], help="principal components for --lighting: ImageNet's (the paper's) or computed from the training images")
    parser.add_argument("--loader", default="auto", choices=["auto", "memory", "stream"], help="image folders: decode once and keep in memory, or stream with DataLoader workers; auto: memory if it fits in 8 GiB")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes for image folders")
    parser.add_argument("--max-bad-files", type=int, default=10, help="unreadable image files to skip (with a warning) before refusing the folder")
    # model
    parser.add_argument("--model", default="default", choices=list(MODELS), help="default: the paper's layers without LRN and towers; paper: with them; torchvision: torchvision's variant")
    parser.add_argument("--init", default="he", choices=INITS, help="weight init: he (trains reliably), paper (N(0, 0.01), unit biases: can stall), caffe (biases 0.1)")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout on the two hidden FC layers")
    parser.add_argument("--pretrained", default=None, choices=["imagenet"], help="fine-tune from torchvision's ImageNet weights (torchvision layout, new last layer, ImageNet mean/std)")
    # optimisation
    parser.add_argument("--epochs", type=int, default=8, help="number of epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step per process (with torchrun the global batch is this times the number of processes)")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    parser.add_argument("--schedule", default="step", choices=["step", "onecycle", "plateau"], help="step: StepLR; onecycle: linear warm-up to --lr, then linear decay to zero; plateau: divide by 10 when validation top-1 stops improving (the paper)")
    parser.add_argument("--lr-step", type=int, default=6, help="step schedule: multiply the lr by --lr-gamma every this many epochs")
    parser.add_argument("--lr-gamma", type=float, default=0.1, help="step schedule: StepLR factor")
    parser.add_argument("--lr-patience", type=int, default=4, help="plateau schedule: epochs without improvement before dividing the lr by 10")
    parser.add_argument("--warmup-steps", type=int, default=200, help="linear lr warm-up from lr/100 (lr/25 for onecycle) over this many steps")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each epoch (training and validation) after this many batches: for smoke tests")
    # device and precision
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="mixed precision; auto: bf16 where it is fast (CUDA with bf16, CPUs with AVX-512 bf16/AMX), fp16 on older GPUs, else off")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (minutes of compilation; pays off on long GPU runs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data generation, init, order, augmentation)")
    # evaluation
    parser.add_argument("--evaluate", default=None, help="only evaluate this checkpoint (or run directory's best.pt) on the validation set")
    parser.add_argument("--tta", default="none", choices=TTA_MODES, help="with --evaluate: 10crop = the paper's ten crops (corners, centre, mirrored), softmax averaged")
    # output
    parser.add_argument("--out-dir", default="runs", help="directory holding all runs")
    parser.add_argument("--name", default=None, help="run name (default: <dataset>-<date>-<time>)")
    parser.add_argument("--resume", default=None, help="checkpoint (last.pt) or run directory to continue from, with its settings")
    parser.add_argument("--log-interval", type=int, default=50, help="steps between progress lines (a progress bar on a terminal)")
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.recipe:
        parser.set_defaults(**RECIPES[first.recipe])
    args = parser.parse_args(argv)
    # The flags given on the command line, for --resume (which takes the others from the checkpoint).
    explicit = build_parser()
    for action in explicit._actions:
        action.default = argparse.SUPPRESS
    args.explicit = sorted(vars(explicit.parse_args(argv)))

    for flag in ("epochs", "batch_size", "train_size", "val_size", "lr_step", "log_interval", "lr_patience"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    for flag in ("workers", "warmup_steps", "max_bad_files", "weight_decay", "momentum", "lighting"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} cannot be negative, got {getattr(args, flag)}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    smallest = TORCHVISION_MIN_INPUT_SIZE if args.model == "torchvision" or args.pretrained else MIN_INPUT_SIZE
    if args.image_size is not None and args.image_size < smallest:
        parser.error(f"--image-size must be at least {smallest} (the smallest input of the {args.model} model), got {args.image_size}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if not 0 <= args.label_smoothing < 1:
        parser.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.data is not None and not (Path(args.data) / "train").is_dir():
        parser.error(f"--data {args.data}: expected an image folder with train/<class>/ and val/<class>/ subfolders")
    if args.pretrained and args.model == "paper":
        parser.error("--pretrained imagenet loads torchvision's layout; drop --model paper")
    if args.tta != "none" and not args.evaluate:
        parser.error("--tta applies to --evaluate CHECKPOINT")
    if args.resume and args.evaluate:
        parser.error("--resume and --evaluate do not go together")
    try:
        args.device = pick_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    return args


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA, then Apple MPS, then CPU; an explicit name is checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: unknown device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: unsupported; use auto, cpu, cuda, cuda:N or mps")
    return device


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (which sets RANK, LOCAL_RANK and WORLD_SIZE),
    join the process group: NCCL with one GPU per process, gloo on CPUs. Plain python: (0, 1)."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "mps":
        raise SystemExit("error: torchrun with --device mps is not supported; use --device cpu")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process, pinned to its local rank
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return rank, world_size, device


def pick_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. auto: bf16 where it is fast, fp16 on CUDA GPUs
    without bf16 (pre-Ampere; with a GradScaler), fp32 elsewhere (MPS, CPUs without bf16 units,
    where autocast would only add casts)."""
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if bf16_is_fast(device) else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[choice]


def bf16_is_fast(device: torch.device) -> bool:
    """Whether this CPU has bfloat16 units (AVX-512 bf16 or AMX): there bf16 autocast is ~2x faster."""
    if device.type == "cpu" and sys.platform == "linux":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


# ----------------------------------------------------------------------------------------------
# Steps of the loop.


def accuracy_counts(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k scores, for each k (as tensors, no sync)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (B, k)
    hits = top == labels[:, None]
    return [hits[:, :k].any(dim=1).sum() for k in ks]


def train_step(forward, criterion, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: torch.Tensor,
               labels: torch.Tensor, amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch (bench.py times this same step) -> (logits, loss), without a host sync."""
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = forward(x)
        loss = criterion(logits.float(), labels)  # softmax and loss in float32 even under autocast
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # fp16: scaled so that small gradients do not flush to zero
    scaler.step(optimizer)
    scaler.update()
    return logits, loss


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, amp_dtype: torch.dtype | None, num_classes: int, world_size: int) -> dict:
    """Loss, top-1 and top-5 accuracy and the confusion matrix over normalised (images, labels)
    batches, exact over all processes. Images (B, K, C, S, S) are K crops each (10-crop testing):
    their softmax probabilities are averaged. The model is left in the mode it came in."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits, count
    count = 0
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    for images, labels in batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            log_probs = class_log_probabilities(model, images)
        loss = F.nll_loss(log_probs, labels, reduction="sum")
        totals[:3] += torch.stack([loss, *accuracy_counts(log_probs, labels)]).double()
        count += len(labels)
        cells = labels * num_classes + log_probs.argmax(dim=1)  # a scatter, not a num_classes^2 bincount per batch
        confusion.index_add_(0, cells, torch.ones_like(cells))
    totals[3] = count  # once, not a small host-to-device copy per batch
    if world_size > 1:
        dist.all_reduce(totals)
        dist.all_reduce(confusion)
    model.train(was_training)
    loss_sum, top1, top5, count = totals.tolist()  # one host sync for the whole evaluation
    count = max(count, 1)
    return {"loss": loss_sum / count, "top1": top1 / count, "top5": top5 / count, "confusion": confusion.view(num_classes, num_classes).cpu()}


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    save_atomically(state, path)


def rng_states(device: torch.device) -> dict:
    """Every random number generator's state (NumPy's key array as a tensor, for weights_only loading)."""
    kind, keys, *rest = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), *rest), "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(states["python"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def progress(step: int, total: int, loss: float, top1: float, seconds: float, interactive: bool) -> None:
    """A progress bar on a terminal, a plain line otherwise."""
    if interactive:
        done = int(30 * step / total)
        print(f"\r  [{'=' * done}{' ' * (30 - done)}] {step}/{total}  loss {loss:.3f}  top-1 {100 * top1:5.1f}%  {seconds:.0f}s", end="", flush=True)
        if step == total:
            print("\r" + " " * 100 + "\r", end="", flush=True)
    else:
        print(f"  step {step}/{total}  loss {loss:.3f}  top-1 {100 * top1:5.1f}%  {seconds:.0f}s", flush=True)


def sample_indices(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over `total` (validation sets are often sorted by class)."""
    return torch.linspace(0, total - 1, min(count, total)).long().tolist()


def save_samples(images: torch.Tensor, labels: torch.Tensor, classes: list[str], folder: Path, count: int = 8) -> None:
    """A few validation images as PNG files named after their class, for the inference demo."""
    folder.mkdir(exist_ok=True)
    for i, index in enumerate(sample_indices(count, len(labels))):
        name = classes[int(labels[index])].replace("/", "_").replace(" ", "_")
        TF.to_pil_image(images[index].cpu()).save(folder / f"{i:02d}_{name}.png")


def load_checkpoint_file(path: Path, flag: str) -> dict:
    """A train.py checkpoint, loaded safely (tensors and plain data only) and checked (its weights
    fit its model_config), or one clear error line."""
    try:
        return read_checked_checkpoint(path)
    except CheckpointError as error:
        raise SystemExit(f"error: {flag} {error}") from None


def check_resumable(checkpoint: dict, model: AlexNet, path: Path) -> None:
    """One line saying what differs when a checkpoint's model is not the requested one."""
    saved, wanted = checkpoint["model_config"], model.config
    differences = [f"{key} {saved.get(key)} there, {wanted.get(key)} here" for key in sorted(wanted) if saved.get(key) != wanted.get(key)]
    if differences:
        raise SystemExit(f"error: --resume {path}: the checkpoint's model differs from the requested one ({'; '.join(differences)}); "
                         "resume with the same data and model flags, or start a new run")


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)

    # Device, seed, precision ------------------------------------------------------------------
    rank, world_size, device = setup_distributed(args.device)
    log = print if rank == 0 else (lambda *_, **__: None)  # only rank 0 talks
    resume = None
    if args.resume:
        path = Path(args.resume)
        resume_path = path / "last.pt" if path.is_dir() else path
        if not resume_path.is_file():
            raise SystemExit(f"error: --resume {args.resume}: no checkpoint there (expected a last.pt or a run directory)")
        resume = load_checkpoint_file(resume_path, "--resume")
        if "optimizer" not in resume or "args" not in resume:
            raise SystemExit(f"error: --resume {resume_path}: holds weights only (best.pt); resume from last.pt")
        for key, value in resume["args"].items():  # the run's own settings, unless given again
            if key not in args.explicit and key not in NOT_RESUMED and key != "explicit":
                setattr(args, key, value)
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)  # dropout differs per process; DDP copies rank 0's initial weights
    amp_dtype = pick_precision(args.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for whatever stays in fp32
        torch.backends.cudnn.allow_tf32 = True
    # channels_last lets oneDNN (CPU) and cuDNN use their fastest convolution kernels.
    memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format

    evaluated = None
    if args.evaluate:
        path = Path(args.evaluate)
        evaluated = load_checkpoint_file(path / "best.pt" if path.is_dir() else path, "--evaluate")
        args.image_size = evaluated["preprocess"]["image_size"]
        args.in_channels = evaluated["preprocess"]["in_channels"]  # e.g. an MNIST model on RGB folders: convert the data

    # Data -------------------------------------------------------------------------------------
    source = "folder" if args.data else args.dataset
    args.image_size = args.image_size or DEFAULT_IMAGE_SIZE[source]
    if source == "shapes":
        log(f"Training on the built-in shapes dataset (generated in code, {args.train_size} train / "
            f"{args.val_size} val images at {args.image_size}px).")
        log("For real data: --dataset mnist|fashion-mnist|cifar10|cifar100 [--download], or --data DIR "
            "(DIR/train/<class>/*, DIR/val/<class>/*). See python train.py --help.")
    else:
        log(f"Training on {args.data or f'{source} from {args.data_root}/'} at {args.image_size}px")
    start = time.perf_counter()
    if world_size > 1 and rank != 0:
        dist.barrier()  # rank 0 decodes and caches image folders first; the others then read the cache
    train_data, val_data, classes, preprocess, augment = load_data(
        source, data_dir=args.data, data_root=args.data_root, download=args.download, image_size=args.image_size,
        channels=args.in_channels, train_size=args.train_size, val_size=args.val_size, augment=args.augment,
        loader=args.loader, workers=args.workers, batch_size=args.batch_size, seed=args.seed, device=device,
        lighting=args.lighting, lighting_pca=args.lighting_pca, max_bad_files=args.max_bad_files, rank=rank,
        world_size=world_size, normalization=(IMAGENET_PREPROCESS["mean"], IMAGENET_PREPROCESS["std"]) if args.pretrained else None,
    )
    if world_size > 1 and rank == 0:
        dist.barrier()
    channels = preprocess["in_channels"]
    log(f"{len(train_data)} training and {len(val_data)} validation images, {len(classes)} classes, {channels} channel(s), "
        f"{'in memory' if isinstance(train_data, InMemory) else 'streamed'}, ready in {time.perf_counter() - start:.1f}s; "
        f"device {device}{f' x {world_size} processes' if world_size > 1 else ''}, "
        f"{'fp32' if amp_dtype is None else str(amp_dtype).replace('torch.', '') + ' autocast'}")

    def validation_batches(preprocess: dict, tta: str = "none"):
        transform = ten_crop_transform if tta == "10crop" else eval_transform
        batches = ((transform(images, preprocess).contiguous(memory_format=memory_format) if tta == "none" else transform(images, preprocess), labels)
                   for images, labels in val_data.batches())
        return (batch for _, batch in zip(range(args.max_steps), batches)) if args.max_steps else batches

    if evaluated is not None:  # --evaluate: one pass over the validation set, then stop
        model = AlexNet(**evaluated["model_config"]).to(device, memory_format=memory_format)
        model.load_state_dict(evaluated["model"])
        if evaluated["classes"] != classes:
            raise SystemExit(f"error: --evaluate {args.evaluate}: its classes ({len(evaluated['classes'])}) are not this data's ({len(classes)})")
        val = evaluate(model, validation_batches(evaluated["preprocess"], args.tta), amp_dtype, len(classes), world_size)
        log(f"{args.evaluate} ({'10-crop' if args.tta == '10crop' else 'centre crop'}): validation loss {val['loss']:.3f} "
            f"top-1 {100 * val['top1']:.2f}% top-5 {100 * val['top5']:.2f}%")
        log(json.dumps({"checkpoint": str(args.evaluate), "tta": args.tta, "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]}))
        if world_size > 1:
            dist.destroy_process_group()
        return

    steps_per_epoch = train_data.num_batches()
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    augment_rng = torch.Generator()  # crop boxes, flips, lighting (drawn on the CPU): reseeded every epoch

    # Model ------------------------------------------------------------------------------------
    if args.pretrained:
        try:
            weights = imagenet_state_dict()
        except CheckpointError as error:  # offline, or a damaged file in torch's cache
            raise SystemExit(f"error: --pretrained imagenet: {error}") from None
        model = AlexNet.from_torchvision(weights, num_classes=len(classes), dropout=args.dropout)
    else:
        model = AlexNet(num_classes=len(classes), in_channels=channels, dropout=args.dropout, init=args.init, **MODELS[args.model])
    model = model.to(device, memory_format=memory_format)
    if resume is not None:
        check_resumable(resume, model, resume_path)
    # DDP averages the gradients over the processes during backward (and starts them all from
    # rank 0's weights); `model` stays the plain module, whose state_dict checkpoints hold.
    train_model = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    # torch.compile fuses the ReLUs, dropouts and casts into the matmuls and convolutions around them.
    forward = torch.compile(train_model) if args.compile else train_model

    # Optimiser and schedule -------------------------------------------------------------------
    # Fused SGD: one kernel for the whole update of 58 M parameters (3x faster than a loop on CPU).
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                weight_decay=args.weight_decay, fused=device.type in ("cpu", "cuda") or None)
    # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    total_steps = args.epochs * steps_per_epoch
    if args.schedule == "onecycle":
        step_schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, total_steps=total_steps, pct_start=min(0.5, max(args.warmup_steps, 1) / total_steps),
            anneal_strategy="linear", cycle_momentum=False, div_factor=25, final_div_factor=1e4)
        epoch_schedule = None
    else:
        # PAPER: no warm-up there. A few hundred small steps let the randomly initialised network
        # settle before the full learning rate; without it plain SGD on AlexNet often diverges or stalls.
        step_schedule = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01 if args.warmup_steps else 1.0, total_iters=max(args.warmup_steps, 1))
        if args.schedule == "plateau":  # the paper: lr / 10 when the validation error stops improving
            epoch_schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=args.lr_patience)
        else:
            epoch_schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=args.lr_gamma)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    # Output -----------------------------------------------------------------------------------
    start_epoch, start_batch, best_top1, metrics, partial = 1, 0, -1.0, [], None
    if resume is not None:
        run_dir = resume_path.parent
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        step_schedule.load_state_dict(resume["step_schedule"])
        if epoch_schedule is not None:
            epoch_schedule.load_state_dict(resume["epoch_schedule"])
        scaler.load_state_dict(resume["scaler"])
        start_epoch, best_top1, partial = resume["epoch"] + 1, resume["best_top1"], resume.get("partial")  # older runs: no partial
        if rank == 0:  # other processes keep their own seeds: exact resumption is a single-process promise
            set_rng_states(resume["rng"], device)
        metrics_path = run_dir / "metrics.jsonl"
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line] if metrics_path.exists() else []
        metrics = [m for m in metrics if m["epoch"] < start_epoch]
        if partial is not None:
            start_batch = partial["batch"]
        log(f"Resuming {resume_path} at epoch {start_epoch}{f', step {start_batch + 1}' if start_batch else ''}")
        old_world_size, old_batch_size = resume.get("world_size", 1), resume["args"]["batch_size"]
        # An interrupted epoch is resumed by its batch count, and one-cycle by its step count: both
        # mean something else under another global batch.
        if old_world_size * old_batch_size != world_size * args.batch_size and (partial is not None or args.schedule == "onecycle"):
            why = "the run stopped mid-epoch" if partial is not None else "its one-cycle schedule counts steps"
            raise SystemExit(f"error: --resume {resume_path}: {why}, so it needs its global batch of {old_world_size * old_batch_size} "
                             f"({old_world_size} process(es) of --batch-size {old_batch_size}), not {world_size * args.batch_size}")
        if (old_world_size, old_batch_size) != (world_size, args.batch_size):
            log(f"note: that run had {old_world_size} process(es) of batch {old_batch_size}, this one has "
                f"{world_size} of batch {args.batch_size}: the global batch is now {world_size * args.batch_size}")
    else:
        name = args.name or f"{source if source != 'folder' else Path(args.data).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.out_dir) / name
        if rank == 0:
            if run_dir.exists():
                raise SystemExit(f"error: run directory {run_dir} already exists; choose another --name or --resume {run_dir}")
            run_dir.mkdir(parents=True)
    log(f"Writing to {run_dir}/")
    if rank == 0 and isinstance(val_data, InMemory) and resume is None:
        save_samples(val_data.images, val_data.labels, classes, run_dir / "samples")

    def checkpoint(epoch: int, partial: dict | None = None) -> dict:
        """Everything to rebuild the model (inference.py) and to continue exactly (--resume)."""
        return {
            "model": model.state_dict(),
            "model_config": model.config,
            "classes": classes,
            "preprocess": preprocess,
            "optimizer": optimizer.state_dict(),
            "step_schedule": step_schedule.state_dict(),
            "epoch_schedule": epoch_schedule.state_dict() if epoch_schedule is not None else None,
            "scaler": scaler.state_dict(),
            "epoch": epoch,  # the last completed epoch
            "partial": partial,  # where an interrupted epoch stopped, or None
            "best_top1": best_top1,
            "world_size": world_size,
            "args": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items() if k != "explicit"},
            "rng": rng_states(device),
        }

    def save_pictures(val: dict) -> None:
        """The learned filters, sample predictions and the confusion matrix (curves.png is drawn every epoch)."""
        plot_filters(model.features[0].weight.detach().float().cpu(), run_dir / "filters.png", groups=model.config["groups"])
        if len(classes) <= 20:
            plot_confusion(val["confusion"], classes, run_dir / "confusion.png")
        if isinstance(val_data, InMemory):
            index = torch.tensor(sample_indices(8, len(val_data)), device=device)
            images, labels = val_data.images[index], val_data.labels[index]
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                probabilities = model(eval_transform(images, preprocess).contiguous(memory_format=memory_format)).float().softmax(1)
            model.train()
            confidence, predictions = probabilities.max(1)
            plot_predictions(images.cpu(), labels.cpu(), predictions.cpu(), classes, run_dir / "predictions.png", confidence.cpu())

    # Ctrl-C and SIGTERM (what schedulers send) finish the current step, save and stop; a second
    # Ctrl-C stops at once.
    stop = {"signal": None}

    def request_stop(signum: int, frame) -> None:  # no printing here: the signal may interrupt a print
        if stop["signal"] == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop["signal"] = signum

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def stop_requested() -> bool:
        if world_size == 1:
            return stop["signal"] is not None
        flag = torch.tensor([stop["signal"] or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # all processes stop at the same step
        stop["signal"] = stop["signal"] or (int(flag) or None)
        return stop["signal"] is not None

    # Loop -------------------------------------------------------------------------------------
    interactive = sys.stdout.isatty() and rank == 0
    show_every = 10 if interactive else args.log_interval  # reading the loss syncs with the device
    step = step_schedule.last_epoch
    for epoch in range(start_epoch, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        log(f"Epoch {epoch}/{args.epochs}  lr {lr:.4g}")
        model.train()
        start = time.perf_counter()
        # Running totals stay on the device: loss sum, top-1 hits, top-5 hits, first step with a non-finite loss.
        totals = torch.tensor([0.0, 0.0, 0.0, -1.0], device=device, dtype=torch.float64)
        seen, carried_seconds, first_batch = 0, 0.0, 0
        augment_rng.manual_seed(args.seed * 1000 + epoch)
        if partial is not None:  # continue an interrupted epoch exactly where it stopped
            totals = torch.tensor(partial["totals"], device=device, dtype=torch.float64)
            seen, carried_seconds, first_batch, lr = partial["seen"], partial["seconds"], partial["batch"], partial["lr"]
            augment_rng.set_state(partial["augment_rng"])
            partial = None
        batches = train_data.batches(seed=args.seed * 1000 + epoch, start=first_batch)
        for i, (images, labels) in enumerate(batches, start=first_batch + 1):
            x = train_transform_batch(images, augment, augment_rng, memory_format, rank, world_size)
            logits, loss = train_step(forward, criterion, optimizer, scaler, x, labels, amp_dtype)
            if args.schedule == "onecycle" and step < total_steps or args.schedule != "onecycle" and step < args.warmup_steps:
                step_schedule.step()
            step += 1
            loss = loss.detach()
            first_bad = torch.where((totals[3] < 0) & ~loss.isfinite(), i, totals[3])
            top1, top5 = accuracy_counts(logits.detach(), labels)
            totals = torch.stack([totals[0] + loss * len(labels), totals[1] + top1, totals[2] + top5, first_bad])
            seen += len(labels)
            shown = i % show_every == 0 or i == steps_per_epoch
            if shown or world_size == 1 and stop["signal"]:
                loss_sum, hits, _, bad_step = totals.tolist()  # the only host sync of the loop
                if bad_step >= 0:
                    last = f"; the last good checkpoint is {run_dir / 'last.pt'}" if (run_dir / "last.pt").exists() else ""
                    raise SystemExit(f"error: the training loss became {loss_sum / seen} at epoch {epoch}, step {int(bad_step)}{last} "
                                     f"(not overwritten); lower --lr (now {args.lr}) or raise --warmup-steps (now {args.warmup_steps})")
                if shown:
                    log_time = carried_seconds + time.perf_counter() - start
                    if rank == 0:
                        progress(i, steps_per_epoch, loss_sum / seen, hits / seen, log_time, interactive)
            if (shown or world_size == 1) and i < steps_per_epoch and stop_requested():
                if rank == 0:
                    state = checkpoint(epoch - 1, {"batch": i, "totals": totals.tolist(), "seen": seen, "lr": lr, "augment_rng": augment_rng.get_state(),
                                                   "seconds": carried_seconds + time.perf_counter() - start})
                    save_checkpoint(state, run_dir / "last.pt")
                log(f"{signal.Signals(stop['signal']).name}: stopped at epoch {epoch}, step {i}/{steps_per_epoch}; saved {run_dir / 'last.pt'}. Resume with: "
                    f"python train.py --resume {run_dir}")
                raise SystemExit(128 + stop["signal"])  # 130 for SIGINT, 143 for SIGTERM
            if i >= steps_per_epoch:
                break
        train_seconds = carried_seconds + time.perf_counter() - start
        train_loss, train_top1, train_top5 = (value / seen for value in totals[:3].tolist())
        val = evaluate(forward, validation_batches(preprocess), amp_dtype, len(classes), world_size)
        if isinstance(epoch_schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            epoch_schedule.step(val["top1"])
        elif epoch_schedule is not None:
            epoch_schedule.step()
        epoch_seconds = carried_seconds + time.perf_counter() - start
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_top1": train_top1,
            "train_top5": train_top5,
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "lr": lr,
            "epoch_seconds": epoch_seconds,
            "images_per_second": seen * world_size / train_seconds,
        }
        metrics.append(row)
        log(f"Epoch {epoch}/{args.epochs}  train loss {train_loss:.3f} top-1 {100 * train_top1:.1f}%  |  "
            f"val loss {val['loss']:.3f} top-1 {100 * val['top1']:.1f}% top-5 {100 * val['top5']:.1f}%  |  "
            f"{epoch_seconds:.0f}s  {row['images_per_second']:.0f} img/s", flush=True)

        # Save (rank 0 only): last.pt every epoch, best.pt when validation top-1 improves.
        improved = val["top1"] > best_top1
        best_top1 = max(best_top1, val["top1"])
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in metrics)
            plot_curves(metrics, run_dir / "curves.png")
            if epoch == args.epochs or stop["signal"]:  # the other pictures once, at the end (a second or two each)
                save_pictures(val)
            state = checkpoint(epoch)
            save_checkpoint(state, run_dir / "last.pt")
            if improved:  # what inference needs, without the optimiser's momentum: half the size
                save_checkpoint({key: state[key] for key in INFERENCE_KEYS}, run_dir / "best.pt")
        if epoch < args.epochs and stop_requested():
            log(f"{signal.Signals(stop['signal']).name}: stopped after epoch {epoch}; saved {run_dir / 'last.pt'}. Resume with: python train.py --resume {run_dir}")
            raise SystemExit(128 + stop["signal"])

    # Final summary ----------------------------------------------------------------------------
    if metrics:
        total = sum(m["epoch_seconds"] for m in metrics)
        log(f"Done: best validation top-1 {100 * best_top1:.1f}%, {total:.0f}s of training. Checkpoints in {run_dir}/")
    samples = sorted((run_dir / "samples").glob("*.png"))
    if samples:
        log(f"Try: python inference.py {samples[0]}")
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
