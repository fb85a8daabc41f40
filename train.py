"""Train AlexNet on the built-in shapes dataset, MNIST, Fashion-MNIST, CIFAR or an image folder.

Examples:
    python train.py                                      # built-in shapes, offline, ~5 min on 2 CPU cores
    python train.py --dataset mnist --download           # torchvision datasets live under data/
    python train.py --dataset cifar10 --epochs 30 --image-size 131
    python train.py --data /path/to/imagenet --epochs 90 # DIR/train/<class>/*, DIR/val/<class>/*
    python train.py --resume runs/shapes-20261122-101500/last.pt
    python train.py --epochs 1 --max-steps 5             # smoke test: 5 steps per epoch

Each run writes runs/<name>/: last.pt and best.pt (everything inference.py needs, plus optimiser
state for --resume), metrics.jsonl (one line per epoch), curves.png and, for in-memory datasets,
a few validation images under samples/ to try inference.py on.
"""

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from alexnet import MIN_INPUT_SIZE, AlexNet
from inference import eval_transform, load_image
from shapes import CLASSES as SHAPE_CLASSES
from shapes import make_shapes

DATASETS = ["shapes", "mnist", "fashion-mnist", "cifar10", "cifar100"]
# Default input size per dataset. Small images are upscaled so that AlexNet's stride-4 conv1 and
# three max-pools have something to work on; 67 is the smallest size the network accepts and keeps
# CPU training fast. GPU users may prefer --image-size 227 (the paper's arithmetic) for CIFAR.
DEFAULT_IMAGE_SIZE = {"shapes": 67, "mnist": 67, "fashion-mnist": 67, "cifar10": 67, "cifar100": 67, "folder": 224}


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    parser.add_argument("--dataset", default="shapes", choices=DATASETS, help="built-in or torchvision dataset")
    parser.add_argument("--data", default=None, help="image folder in ImageNet layout: DIR/train/<class>/*, DIR/val/<class>/* (overrides --dataset)")
    parser.add_argument("--data-root", default="data", help="where torchvision datasets are stored")
    parser.add_argument("--download", action="store_true", help="download the torchvision dataset if it is missing (needs network)")
    parser.add_argument("--image-size", type=int, default=None, help=f"model input size; default per dataset: {DEFAULT_IMAGE_SIZE}")
    parser.add_argument("--in-channels", type=int, default=None, choices=[1, 3], help="default: from the dataset (MNIST 1, others 3)")
    parser.add_argument("--train-size", type=int, default=12000, help="built-in dataset: number of training images")
    parser.add_argument("--val-size", type=int, default=2000, help="built-in dataset: number of validation images")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes (image folders)")
    # model
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout on the two hidden FC layers")
    # optimisation
    parser.add_argument("--epochs", type=int, default=8, help="number of epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    parser.add_argument("--lr-step", type=int, default=6, help="StepLR: multiply the lr by --lr-gamma every this many epochs")
    parser.add_argument("--lr-gamma", type=float, default=0.1, help="StepLR factor")
    parser.add_argument("--warmup-steps", type=int, default=200, help="linear lr warm-up from lr/100 over this many steps")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each epoch (training and validation) after this many batches: for smoke tests")
    # device and precision
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast; default: on where bf16 is fast (CUDA with bf16, CPUs with AVX-512 bf16/AMX)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data generation, init, order, augmentation)")
    # output
    parser.add_argument("--out-dir", default="runs", help="directory holding all runs")
    parser.add_argument("--name", default=None, help="run name (default: <dataset>-<date>-<time>)")
    parser.add_argument("--resume", default=None, help="checkpoint (last.pt) or run directory to continue from")
    parser.add_argument("--log-interval", type=int, default=50, help="steps between progress lines when stdout is not a terminal")
    args = parser.parse_args(argv)

    for flag in ("epochs", "batch_size", "train_size", "val_size", "lr_step", "log_interval"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.image_size is not None and args.image_size < MIN_INPUT_SIZE:
        parser.error(f"--image-size must be at least {MIN_INPUT_SIZE} (AlexNet's smallest input), got {args.image_size}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.data is not None and not (Path(args.data) / "train").is_dir():
        parser.error(f"--data {args.data}: expected an image folder with train/<class>/ and val/<class>/ subfolders")
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
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: unsupported; use auto, cpu, cuda, cuda:N or mps")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds up training here (and is supported at all)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and sys.platform == "linux":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


# ----------------------------------------------------------------------------------------------
# Data. In-memory datasets (shapes, MNIST, CIFAR) are held as one uint8 tensor on the training
# device and augmented a batch at a time; image folders stream through a DataLoader.


class InMemory:
    """A labelled uint8 image tensor (N, C, H, W) that yields augmented, normalised batches."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], device: torch.device) -> None:
        self.images, self.labels = images.to(device), labels.to(device)
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, shuffle: bool, seed: int = 0):
        """(uint8 images, labels) batches; shuffled in an order fixed by `seed`."""
        if shuffle:
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).to(self.labels.device)
        else:
            order = torch.arange(len(self), device=self.labels.device)
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            yield self.images[index], self.labels[index]

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)


def random_crop_batch(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Pad each image by `padding` (zeros) and cut a random crop of the original size from it."""
    n, _, h, w = images.shape
    padded = F.pad(images, [padding] * 4)
    top = torch.randint(0, 2 * padding + 1, (n, 1), device=images.device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), device=images.device)
    rows = (top + torch.arange(h, device=images.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (left + torch.arange(w, device=images.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]  # (N, C, H, W)


def train_transform_batch(images: torch.Tensor, spec: dict) -> torch.Tensor:
    """Augment a uint8 batch on its device: random crop (padding), upscale, flips; normalise."""
    if spec["crop_padding"]:
        images = random_crop_batch(images, spec["crop_padding"])
    x = TF.to_dtype(images, torch.float32, scale=True)
    if x.shape[-1] != spec["image_size"]:
        x = F.interpolate(x, size=spec["image_size"], mode="bilinear", antialias=False, align_corners=False)
    if spec["flip"]:
        flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
        x = torch.where(flip, x.flip(-1), x)
    return TF.normalize(x, spec["mean"], spec["std"])


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    x = images[:10000].float().div(255)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def load_torchvision(name: str, root: str, download: bool) -> tuple:
    """(train images, train labels, val images, val labels, classes) as uint8 NCHW / int64 tensors."""
    import torchvision.datasets as datasets  # only needed for these datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        train, val = cls(root, train=True, download=download), cls(root, train=False, download=download)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        folder = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
        hint = "check your network connection" if download else "add --download (needs network) or copy the files there"
        raise SystemExit(f"error: --dataset {name}: not found in {Path(root) / folder} ({error}); {hint}") from None
    except OSError as error:  # e.g. no network while downloading
        raise SystemExit(f"error: --dataset {name}: download into {root} failed ({error}); copy the files there by hand") from None

    def as_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.as_tensor(np.asarray(dataset.data))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # -> (N, C, H, W)
        return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)

    return (*as_tensors(train), *as_tensors(val), list(train.classes))


class ImageFolderFiles(torch.utils.data.Dataset):
    """DIR/<class>/<image> files -> (uint8 (C, H, W) tensor, label), with a per-sample transform."""

    def __init__(self, root: Path, classes: list[str], channels: int, transform) -> None:
        extensions = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
        self.samples = [
            (path, label)
            for label, name in enumerate(classes)
            for path in sorted((root / name).rglob("*"))
            if path.suffix.lower() in extensions and path.is_file()
        ]
        self.channels, self.transform = channels, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_image(path, self.channels)), label


def load_folder(args: argparse.Namespace, channels: int) -> tuple:
    """Train and val datasets of an ImageNet-layout folder, its classes and its preprocessing spec."""
    root = Path(args.data)
    if not (root / "val").is_dir():
        raise SystemExit(f"error: --data {root}: no val/ folder; expected {root}/val/<class>/* beside {root}/train/<class>/*")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"error: --data {root}: {root}/train has no class folders; expected {root}/train/<class>/<image>")
    size = args.image_size
    resize = round(size * 256 / 224)  # ImageNet convention: resize to 256, centre-crop 224
    train_tf = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()])
    # The statistics are measured on a sample of training images at the evaluation scale.
    probe = ImageFolderFiles(root / "train", classes, channels, T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(size)]))
    if len(probe) == 0:
        raise SystemExit(f"error: --data {root}: no image files under {root}/train/<class>/")
    sample = torch.stack([probe[i][0] for i in torch.randperm(len(probe), generator=torch.Generator().manual_seed(0))[:500].tolist()])
    mean, std = channel_stats(sample)
    spec = {"image_size": size, "resize_size": resize, "mean": mean, "std": std, "in_channels": channels}
    train = ImageFolderFiles(root / "train", classes, channels, train_tf)
    val = ImageFolderFiles(root / "val", classes, channels, lambda image: eval_transform(image, spec))
    if len(val) == 0:
        raise SystemExit(f"error: --data {root}: no image files under {root}/val/<class>/")
    return train, val, classes, spec


# ----------------------------------------------------------------------------------------------
# Steps of the loop.


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (as tensors, no sync)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (B, k)
    hits = top == labels[:, None]
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(model: AlexNet, batches, amp: bool, device: torch.device) -> dict:
    """Loss, top-1 and top-5 accuracy over normalised (images, labels) batches."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    top1 = torch.zeros((), device=device, dtype=torch.int64)
    top5 = torch.zeros((), device=device, dtype=torch.int64)
    count = 0
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        hits1, hits5 = accuracy_counts(logits, labels)
        top1 += hits1
        top5 += hits5
        count += len(labels)
    model.train()
    count = max(count, 1)
    return {"loss": loss_sum.item() / count, "top1": top1.item() / count, "top5": top5.item() / count}


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def numpy_rng_state() -> tuple:
    """NumPy's RNG state with its key array as a tensor, so weights_only loading accepts it."""
    kind, keys, *rest = np.random.get_state()
    return (kind, torch.from_numpy(keys.astype(np.int64)), *rest)


def plot_curves(metrics: list[dict], path: Path) -> None:
    """Loss and accuracy against epoch, train and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    ax_loss.plot(epochs, [m["val_loss"] for m in metrics], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [100 * m["train_top1"] for m in metrics], "o-", label="train top-1")
    ax_acc.plot(epochs, [100 * m["val_top1"] for m in metrics], "o-", label="validation top-1")
    ax_acc.plot(epochs, [100 * m["val_top5"] for m in metrics], "o--", label="validation top-5")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def progress(step: int, total: int, loss: float, top1: float, seconds: float, interactive: bool, log_interval: int) -> None:
    """A progress bar on a terminal; a plain line every `log_interval` steps otherwise."""
    if interactive:
        done = int(30 * step / total)
        print(f"\r  [{'=' * done}{' ' * (30 - done)}] {step}/{total}  loss {loss:.3f}  top-1 {100 * top1:5.1f}%  {seconds:.0f}s", end="", flush=True)
        if step == total:
            print("\r" + " " * 100 + "\r", end="", flush=True)
    elif step % log_interval == 0 or step == total:
        print(f"  step {step}/{total}  loss {loss:.3f}  top-1 {100 * top1:5.1f}%  {seconds:.0f}s", flush=True)


def save_samples(images: torch.Tensor, labels: torch.Tensor, classes: list[str], folder: Path, count: int = 8) -> None:
    """A few validation images as PNG files, named after their class, for the inference demo."""
    folder.mkdir(exist_ok=True)
    for i in range(min(count, len(labels))):
        image = images[i].cpu()
        name = classes[int(labels[i])].replace("/", "_").replace(" ", "_")
        TF.to_pil_image(image).save(folder / f"{i:02d}_{name}.png")


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)

    # Device, seed, precision ------------------------------------------------------------------
    device = args.device
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    amp = bf16_is_fast(device) if args.amp is None else args.amp
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    # channels_last lets oneDNN (CPU) and cuDNN use their fastest convolution kernels.
    memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format

    resume = None
    if args.resume:
        path = Path(args.resume)
        path = path / "last.pt" if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"error: --resume {args.resume}: no checkpoint there (expected a last.pt or a run directory)")
        resume = torch.load(path, map_location="cpu", weights_only=True)
        resume_path = path

    # Data -------------------------------------------------------------------------------------
    source = "folder" if args.data else args.dataset
    image_size = args.image_size or DEFAULT_IMAGE_SIZE[source]
    args.image_size = image_size
    if source == "shapes":
        print(f"Training on the built-in shapes dataset ({len(SHAPE_CLASSES)} classes, generated in code, "
              f"{args.train_size} train / {args.val_size} val images at {image_size}px).")
        print("For real data: --dataset mnist|fashion-mnist|cifar10|cifar100 [--download], or --data DIR "
              "(DIR/train/<class>/*, DIR/val/<class>/*). See python train.py --help.")
        start = time.perf_counter()
        train_images, train_labels = make_shapes(args.train_size, image_size, seed=args.seed)
        val_images, val_labels = make_shapes(args.val_size, image_size, seed=args.seed + 1_000_003)
        print(f"Generated the images in {time.perf_counter() - start:.1f}s.")
        classes = list(SHAPE_CLASSES)
    elif source != "folder":
        print(f"Training on {source} from {args.data_root}/")
        train_images, train_labels, val_images, val_labels, classes = load_torchvision(source, args.data_root, args.download)
    channels = args.in_channels or (train_images.shape[1] if source != "folder" else 3)

    if source == "folder":
        print(f"Training on the image folder {args.data} at {image_size}px")
        train_set, val_set, classes, preprocess = load_folder(args, channels)
        loader_options = {"batch_size": args.batch_size, "num_workers": args.workers, "pin_memory": device.type == "cuda",
                          "persistent_workers": args.workers > 0}
        train_loader = torch.utils.data.DataLoader(train_set, shuffle=True, drop_last=len(train_set) > args.batch_size, **loader_options)
        val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, **loader_options)
        train_spec = {"mean": preprocess["mean"], "std": preprocess["std"]}
        num_train, num_val = len(train_set), len(val_set)
    else:
        if channels != train_images.shape[1]:  # e.g. --in-channels 3 for MNIST or 1 for CIFAR
            convert = (lambda x: x.expand(-1, 3, -1, -1)) if channels == 3 else (lambda x: TF.rgb_to_grayscale(x))
            train_images, val_images = convert(train_images).contiguous(), convert(val_images).contiguous()
        mean, std = channel_stats(train_images)
        preprocess = {"image_size": image_size, "resize_size": image_size, "mean": mean, "std": std, "in_channels": channels}
        digits = source in ("mnist", "fashion-mnist")
        train_spec = {
            "image_size": image_size,
            "mean": mean,
            "std": std,
            "flip": not digits or source == "fashion-mnist",  # a flipped digit is another glyph
            "crop_padding": train_images.shape[-1] // 8 if source != "shapes" else 0,  # 4 px on CIFAR
        }
        train_data = InMemory(train_images, train_labels, classes, device)
        val_data = InMemory(val_images, val_labels, classes, device)
        num_train, num_val = len(train_data), len(val_data)
    print(f"{num_train} training and {num_val} validation images, {len(classes)} classes, {channels} channel(s), "
          f"device {device}, {'bf16 autocast' if amp else 'fp32'}")

    def train_batches(epoch: int):
        if source == "folder":
            for images, labels in train_loader:
                images = images.to(device, non_blocking=True)
                x = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), train_spec["mean"], train_spec["std"])
                yield x, labels.to(device, non_blocking=True)
        else:
            for images, labels in train_data.batches(args.batch_size, shuffle=True, seed=args.seed * 1000 + epoch):
                yield train_transform_batch(images, train_spec), labels

    def val_batches():
        if source == "folder":
            yield from val_loader
        else:
            for images, labels in val_data.batches(args.batch_size, shuffle=False):
                yield eval_transform(images, preprocess), labels

    steps_per_epoch = len(train_loader) if source == "folder" else train_data.num_batches(args.batch_size)
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)

    # Model ------------------------------------------------------------------------------------
    model = AlexNet(num_classes=len(classes), in_channels=channels, dropout=args.dropout)
    model = model.to(device, memory_format=memory_format)

    # Optimiser and schedule -------------------------------------------------------------------
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    # PAPER: no warm-up there. A few hundred small steps let the randomly initialised network
    # settle before the full learning rate; without it plain SGD on AlexNet often diverges or stalls.
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=max(args.warmup_steps, 1))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=args.lr_gamma)

    # Output -----------------------------------------------------------------------------------
    start_epoch, best_top1, metrics = 1, -1.0, []
    if resume is not None:
        run_dir = resume_path.parent
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        warmup.load_state_dict(resume["warmup"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch, best_top1 = resume["epoch"] + 1, resume["best_top1"]
        torch.set_rng_state(resume["rng"]["torch"])
        kind, keys, *rest = resume["rng"]["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
        random.setstate(resume["rng"]["python"])
        metrics_path = run_dir / "metrics.jsonl"
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line] if metrics_path.exists() else []
        metrics = [m for m in metrics if m["epoch"] < start_epoch]
        print(f"Resuming {resume_path} at epoch {start_epoch}")
    else:
        name = args.name or f"{source if source != 'folder' else Path(args.data).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.out_dir) / name
        if run_dir.exists():
            raise SystemExit(f"error: run directory {run_dir} already exists; choose another --name or --resume {run_dir}")
        run_dir.mkdir(parents=True)
    print(f"Writing to {run_dir}/")
    if source != "folder" and resume is None:
        save_samples(val_images, val_labels, classes, run_dir / "samples")

    def checkpoint(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "model_config": model.config,
            "classes": classes,
            "preprocess": preprocess,
            "optimizer": optimizer.state_dict(),
            "warmup": warmup.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_top1": best_top1,
            "args": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()},
            "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate()},
        }

    # Loop -------------------------------------------------------------------------------------
    interactive = sys.stdout.isatty()
    step = warmup.last_epoch
    for epoch in range(start_epoch, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        print(f"Epoch {epoch}/{args.epochs}  lr {lr:.4g}")
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        hits = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for i, (images, labels) in enumerate(train_batches(epoch), start=1):
            images = images.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step < args.warmup_steps:
                warmup.step()
            step += 1
            loss_sum += loss.detach() * len(labels)
            hits += accuracy_counts(logits.detach(), labels, ks=(1,))[0]
            seen += len(labels)
            if interactive or i % args.log_interval == 0 or i == steps_per_epoch:  # .item() syncs: only when shown
                progress(i, steps_per_epoch, loss_sum.item() / seen, hits.item() / seen, time.perf_counter() - start, interactive, args.log_interval)
            if i >= steps_per_epoch:
                break
        train_seconds = time.perf_counter() - start
        train_loss, train_top1 = loss_sum.item() / seen, hits.item() / seen
        if not math.isfinite(train_loss):
            raise SystemExit(f"error: the training loss became {train_loss} in epoch {epoch}; lower --lr (now {args.lr}) or raise --warmup-steps")
        val_source = val_batches()
        if args.max_steps:
            val_source = (batch for _, batch in zip(range(args.max_steps), val_source))
        val = evaluate(model, val_source, amp, device)
        scheduler.step()
        epoch_seconds = time.perf_counter() - start
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_top1": train_top1,
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "lr": lr,
            "epoch_seconds": epoch_seconds,
            "images_per_second": seen / train_seconds,
        }
        metrics.append(row)
        print(f"Epoch {epoch}/{args.epochs}  train loss {train_loss:.3f} top-1 {100 * train_top1:.1f}%  |  "
              f"val loss {val['loss']:.3f} top-1 {100 * val['top1']:.1f}% top-5 {100 * val['top5']:.1f}%  |  "
              f"{epoch_seconds:.0f}s  {seen / train_seconds:.0f} img/s", flush=True)

        # Save: last.pt every epoch, best.pt when validation top-1 improves.
        with open(run_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in metrics)
        plot_curves(metrics, run_dir / "curves.png")
        improved = val["top1"] > best_top1
        best_top1 = max(best_top1, val["top1"])
        state = checkpoint(epoch)
        save_checkpoint(state, run_dir / "last.pt")
        if improved:
            save_checkpoint(state, run_dir / "best.pt")

    # Final summary ----------------------------------------------------------------------------
    if metrics:
        total = sum(m["epoch_seconds"] for m in metrics)
        print(f"Done: best validation top-1 {100 * best_top1:.1f}%, {total:.0f}s of training. Checkpoints in {run_dir}/")
    samples = sorted((run_dir / "samples").glob("*.png"))
    if samples:
        print(f"Try: python inference.py {samples[0]}")


if __name__ == "__main__":
    main()
