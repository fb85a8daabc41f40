"""Training throughput of our pipeline beside the conventional one: same data, model, batch and device.

Examples:
    python bench.py --data ../shared/data/cifar10 --image-size 224 --batch-size 64
    python bench.py --data ../shared/data/hymenoptera --loader stream --image-size 224 --batch-size 64
    python bench.py --dataset shapes --image-size 67 --batch-size 256 --json

ours:     train.py's pipeline (data_pipeline.py): uint8 images on the device, crops, flips and
          normalisation as batched tensor ops, bf16 autocast where it is fast, channels_last,
          fused SGD, no host sync inside the loop (add --compile for torch.compile).
baseline: the conventional recipe of pytorch/examples' ImageNet script and most tutorials:
          torchvision ImageFolder (or dataset class) with per-sample PIL transforms
          (RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize), a DataLoader with one
          worker per CPU core (pinned memory on CUDA), fp32, NCHW, torch.optim.SGD, and
          loss.item() every step for its running average.

Both train the same AlexNet (default layout) at the same image size and batch size on the same
images and device, each in its own process (so that peak memory is its own): --warmup steps
first (worker start-up, cuDNN autotuning, compilation), then --steps timed steps between two
device syncs. Throughput = images / seconds of the timed steps. Peak memory is the GPU's peak
allocation on CUDA and the process's peak resident memory (without DataLoader workers) on CPU.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet import MIN_INPUT_SIZE, AlexNet
from data_pipeline import DATASETS, LOADERS, DataConfig, InMemory, load_data
from engine import pick_device, pick_precision, sync, train_step
from errors import DataError
from presets import AUGMENTATIONS, train_transform


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # data
    parser.add_argument(
        "--dataset", default="shapes", choices=DATASETS, help="built-in or torchvision dataset (default: shapes)"
    )
    parser.add_argument("--data", default=None, help="image folder DIR/train/<class>/* (overrides --dataset)")
    parser.add_argument(
        "--data-root", default="data", help="torchvision datasets and decoded-image caches (default: data)"
    )
    parser.add_argument("--image-size", type=int, default=224, help="model input size (default: 224)")
    parser.add_argument("--loader", default="auto", choices=LOADERS, help="ours: in memory or streamed (default: auto)")
    parser.add_argument(
        "--augment",
        default="resized-crop",
        choices=AUGMENTATIONS,
        help="ours (default: resized-crop, like the baseline)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (default: CPU cores)"
    )
    parser.add_argument(
        "--train-size", type=int, default=4096, help="built-in dataset: number of images (default: 4096)"
    )
    # optimisation (the same for both)
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default: 0.01)")
    # device and precision
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    parser.add_argument(
        "--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="ours: mixed precision (default: auto)"
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ours: channels_last layout (default: on)",
    )
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile the model")
    # measurement
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument(
        "--only", default=None, choices=["ours", "baseline"], help="run one pipeline in this process (used internally)"
    )
    parser.add_argument(
        "--stats", default=None, help=argparse.SUPPRESS
    )  # internal: the baseline's mean and std, as JSON
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s, to print the fraction of it reached"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "steps", "train_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.warmup < 0 or args.workers < 0:
        parser.error("--warmup and --workers cannot be negative")
    if args.image_size < MIN_INPUT_SIZE:
        parser.error(
            f"--image-size must be at least {MIN_INPUT_SIZE} (AlexNet's smallest input), got {args.image_size}"
        )
    if args.data is not None and not (Path(args.data) / "train").is_dir():
        parser.error(f"--data {args.data}: expected an image folder with a train/<class>/ subfolder")
    try:
        args.device = pick_device(args.device)
    except ValueError as error:
        parser.error(f"--device {error}")
    return args


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU allocation on CUDA, else this process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def train_flops_per_image(model: torch.nn.Module, channels: int, size: int) -> float:
    """FLOPs of one forward and backward pass per image, counted by PyTorch (convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = AlexNet(**model.config)  # a CPU copy: counting needs no device time
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(2, channels, size, size)).sum().backward()
    return counter.get_total_flops() / 2


def time_steps(step, batches, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of step(batch) after `warmup` untimed ones."""
    for _ in range(warmup):
        step(next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    sync(device)
    return time.perf_counter() - start


def forever(make_batches):
    """Batches without end: a new epoch (new shuffle) whenever one runs out."""
    epoch = 0
    while True:
        yield from make_batches(epoch)
        epoch += 1


def run_ours(args: argparse.Namespace) -> dict:
    device = args.device
    start = time.perf_counter()
    config = DataConfig(
        dataset=args.dataset,
        data_dir=args.data,
        data_root=args.data_root,
        image_size=args.image_size,
        train_size=args.train_size,
        val_size=args.batch_size,
        augment=args.augment,
        loader=args.loader,
        workers=args.workers,
        batch_size=args.batch_size,
    )
    try:
        data = load_data(config, device)
    except DataError as error:
        dest = "data" if error.setting == "data_dir" else error.setting
        raise SystemExit(f"error: --{dest.replace('_', '-')} {getattr(args, dest)}: {error}") from None
    train, classes, preprocess, preset = data.train, data.classes, data.preprocess, data.augment
    setup_seconds = time.perf_counter() - start
    amp_dtype = pick_precision(args.amp, device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = AlexNet(num_classes=len(classes), in_channels=preprocess.in_channels).to(
        device, memory_format=memory_format
    )
    forward = torch.compile(model) if args.compile else model
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, fused=fused or None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    augment_rng = torch.Generator().manual_seed(0)

    def step(batch: tuple) -> None:
        images, labels = batch
        x = train_transform(images, preset, augment_rng, memory_format)
        train_step(forward, F.cross_entropy, optimizer, scaler, x, labels, amp_dtype)  # train.py's step

    batches = forever(lambda epoch: train.batches(seed=epoch))
    seconds = time_steps(step, batches, args.warmup, args.steps, device)
    precision = "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", "") + " autocast"
    return {
        "images_per_second": args.steps * args.batch_size / seconds,
        "peak_memory_mb": peak_memory_mb(device),
        "setup_seconds": setup_seconds,
        "train_images": len(train),
        "flops_per_image": train_flops_per_image(model, preprocess.in_channels, args.image_size),
        "mean": preprocess.mean,
        "std": preprocess.std,
        "settings": f"{'in memory' if isinstance(train, InMemory) else 'streamed'}, {preset.kind} on the device, "
        f"{precision}, {'channels_last' if args.channels_last else 'NCHW'}, fused SGD"
        f"{', compiled' if args.compile else ''}",
    }


def baseline_dataset(args: argparse.Namespace, transform):
    """The conventional dataset object: ImageFolder, a torchvision dataset class, or PIL images of shapes."""
    import torchvision.datasets as datasets
    import torchvision.transforms.functional as TF

    if args.data:
        return datasets.ImageFolder(str(Path(args.data) / "train"), transform=transform)
    if args.dataset == "shapes":
        from shapes import make_shapes

        images, labels = make_shapes(args.train_size, 67, seed=0)

        class Shapes(torch.utils.data.Dataset):  # what a tutorial would write: PIL images out of an array
            def __len__(self) -> int:
                return len(labels)

            def __getitem__(self, i: int):
                return transform(TF.to_pil_image(images[i])), int(labels[i])

        return Shapes()
    cls = {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
    }[args.dataset]
    return cls(args.data_root, train=True, download=False, transform=transform)


def run_baseline(args: argparse.Namespace, mean: list[float], std: list[float]) -> dict:
    import torchvision.transforms as T  # the classic (v1) transforms of pytorch/examples

    device = args.device
    start = time.perf_counter()
    transform = T.Compose(
        [T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )
    dataset = baseline_dataset(args, transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=len(dataset) > args.batch_size,
    )
    setup_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    channels = len(mean)
    num_classes = len(dataset.classes) if hasattr(dataset, "classes") else 10
    model = AlexNet(num_classes=num_classes, in_channels=channels).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

    def step(batch: tuple) -> None:
        images, labels = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the running-average meter of pytorch/examples: one host sync per step

    batches = forever(lambda epoch: loader)
    seconds = time_steps(step, batches, args.warmup, args.steps, device)
    return {
        "images_per_second": args.steps * args.batch_size / seconds,
        "peak_memory_mb": peak_memory_mb(device),
        "setup_seconds": setup_seconds,
        "settings": f"{type(dataset).__name__} + PIL transforms, DataLoader({args.workers} workers), fp32, NCHW, SGD",
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu" and Path("/proc/cpuinfo").exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        if names:
            return f"{names[0]}, {os.cpu_count()} cores"
    return f"{platform.processor() or device.type}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args(argv)
    if args.only == "ours":
        print(json.dumps(run_ours(args)))
        return
    if args.only == "baseline":
        stats = json.loads(args.stats)
        print(json.dumps(run_baseline(args, stats["mean"], stats["std"])))
        return

    def child(*extra: str) -> dict:
        """One pipeline in a fresh process: its own memory, no state shared with the other."""
        result = subprocess.run([sys.executable, __file__, *argv, *extra], capture_output=True, text=True)
        which = extra[1]
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
            raise SystemExit(f"error: the {which} run failed: {last}")  # its last line: the error itself
        return json.loads(result.stdout.strip().splitlines()[-1])

    ours = child("--only", "ours")
    # The baseline normalises with the same statistics, measured by our pipeline.
    baseline = child("--only", "baseline", "--stats", json.dumps({"mean": ours["mean"], "std": ours["std"]}))
    result = {
        "ours_images_per_second": ours["images_per_second"],
        "baseline_images_per_second": baseline["images_per_second"],
        "ratio": ours["images_per_second"] / baseline["images_per_second"],
        "device": str(args.device),
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "data": args.data or args.dataset,
        "train_images": ours["train_images"],
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "ours_settings": ours["settings"],
        "baseline_settings": baseline["settings"],
        "ours_peak_memory_mb": ours["peak_memory_mb"],
        "baseline_peak_memory_mb": baseline["peak_memory_mb"],
        "ours_setup_seconds": ours["setup_seconds"],
        "baseline_setup_seconds": baseline["setup_seconds"],
        "train_flops_per_image": ours["flops_per_image"],
        "ours_tflops": ours["images_per_second"] * ours["flops_per_image"] / 1e12,
    }
    if args.peak_tflops:
        result["fraction_of_peak"] = result["ours_tflops"] / args.peak_tflops
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['device_name']} ({result['device']}), torch {result['torch']}, {result['data']} "
        f"({result['train_images']} training images), {args.image_size}px, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup}"
    )
    print(
        f"ours:     {result['ours_images_per_second']:7.1f} img/s  "
        f"peak memory {result['ours_peak_memory_mb']:6.0f} MB  "
        f"({result['ours_settings']})"
    )
    print(
        f"baseline: {result['baseline_images_per_second']:7.1f} img/s  "
        f"peak memory {result['baseline_peak_memory_mb']:6.0f} MB  "
        f"({result['baseline_settings']})"
    )
    print(
        f"ratio:    {result['ratio']:.2f}x   ours at {1e3 * result['ours_tflops']:.0f} GFLOP/s "
        f"({result['train_flops_per_image'] / 1e9:.2f} GFLOP per image per training step)"
        + (f" = {100 * result['fraction_of_peak']:.0f}% of {args.peak_tflops} TFLOP/s" if args.peak_tflops else "")
    )


if __name__ == "__main__":
    main()
