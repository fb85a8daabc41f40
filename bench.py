"""Training throughput of our pipeline beside the conventional one: same data, model, batch and device.

Examples:
    python bench.py --data ../shared/data/hymenoptera --loader-only --workers 2 --json
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

--loader-only measures the data alone (no model): images per second delivered to the device,
decoding and augmentation included, for three loaders with the same --workers, each in its own
process: the conventional one (ImageFolder + the PIL transforms above + DataLoader), ours
streaming the folder, and ours reading its packed copies, raw and JPEG (packs.py; packed first if
needed, with the packing time and the size on disk reported). Each delivers --loader-images images (cycling a
small folder) after one untimed batch per worker (at least two); --cold evicts the packs from the
page cache first, as an epoch over a split larger than memory reads them from the disk.

Both train the same AlexNet (default layout) at the same image size and batch size on the same
images and device, each in its own process (so that peak memory is its own): --warmup steps
first (worker start-up, cuDNN autotuning, compilation), then --steps timed steps between two
device syncs, --repeats times (the median counts). Throughput = images / seconds of the timed steps;
TFLOP/s are read against a large matrix product in the same precision, timed in the same process.
Peak memory is the GPU's peak allocation on CUDA and the process's peak resident memory (without
DataLoader workers) on CPU.

The flags shared with train.py are train.py's (train_settings.py), with the benchmark's defaults; --augment,
--amp, --compile, --channels-last, --loader and --pack-format set our pipeline only.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet import MIN_INPUT_SIZE, MODELS, AlexNet
from data_pipeline import Data, DataConfig, load_data, packs_dir, usable_cpus
from display_text import displayable
from engine import configure_device, pick_device, pick_precision, sync, train_step
from errors import DataError
from presets import IMAGENET_MEAN, IMAGENET_STD, train_transform
from speedups import fast_forward
from train_settings import (
    HelpFormatter,
    SomeFlags,
    TrainSettings,
    add_data_flags,
    add_device_flags,
    add_loading_flags,
    add_model_flags,
    add_optimisation_flags,
    fit_workers,
)


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags that the benchmark uses (train_settings.py: the same names, types and words), with the
    benchmark's defaults where they differ; then the measurement's own flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    defaults = TrainSettings()
    data = {"--dataset", "--data", "--data-root", "--image-size", "--train-size", "--augment"}
    add_data_flags(SomeFlags(parser.add_argument_group("data"), data), defaults)
    add_model_flags(SomeFlags(parser.add_argument_group("model (both)"), {"--model"}), defaults)
    add_optimisation_flags(
        SomeFlags(parser.add_argument_group("optimisation (both)"), {"--batch-size", "--lr"}), defaults
    )
    group = parser.add_argument_group("device and precision (ours: the baseline computes in fp32, NCHW)")
    add_device_flags(SomeFlags(group, {"--device", "--amp", "--compile"}), defaults)
    group.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True, help="ours: channels_last layout"
    )
    loading = {"--loader", "--pack-dir", "--pack-format", "--workers"}  # (--workers: the baseline's DataLoader's too)
    add_loading_flags(SomeFlags(parser.add_argument_group("loading image folders"), loading), defaults)
    # The conventional recipe's input and augmentation, a worker per core, a dataset large enough to time.
    parser.set_defaults(image_size=224, augment="resized-crop", workers=usable_cpus(), train_size=4096)
    add_measurement_flags(parser.add_argument_group("measurement"))
    return parser


def add_measurement_flags(group: argparse._ArgumentGroup) -> None:
    """What is timed, how often and how long it may take."""
    group.add_argument(
        "--loader-only", action="store_true", help="the data loaders alone, without the model (needs --data)"
    )
    group.add_argument("--loader-images", type=int, default=2000, help="--loader-only: images each loader delivers")
    group.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    group.add_argument("--steps", type=int, default=20, help="timed steps")
    group.add_argument("--repeats", type=int, default=1, help="time the --steps this many times; the median counts")
    group.add_argument(
        "--timeout", type=float, default=None, help="seconds each pipeline's process may take (None: no limit)"
    )
    group.add_argument(
        "--cold",
        action="store_true",
        help="--loader-only: evict the packs from the page cache before timing them (as an epoch of a dataset "
        "larger than memory reads them)",
    )
    group.add_argument(
        "--only",
        default=None,
        choices=["ours", "baseline", "stream", "packed"],
        help="run one pipeline in this process (used internally)",
    )
    group.add_argument("--stats", default=None, help=argparse.SUPPRESS)  # internal: the baseline's mean and std, JSON
    group.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s, to print the fraction of it reached"
    )
    group.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: a bad value is one argparse error naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("batch_size", "steps", "train_size", "loader_images", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.warmup < 0 or args.workers < 0:
        parser.error("--warmup and --workers cannot be negative")
    fit_workers(args)  # (as train.py: no more than the CPUs this process may use, with its one note line)
    if args.image_size < MIN_INPUT_SIZE:
        parser.error(
            f"--image-size must be at least {MIN_INPUT_SIZE} (AlexNet's smallest input), got {args.image_size}"
        )
    if args.data is not None and not (Path(args.data) / "train").is_dir():
        parser.error(f"--data {args.data}: expected an image folder with a train/<class>/ subfolder")
    if args.loader_only and args.data is None:
        parser.error("--loader-only measures image-folder loaders: give the folder with --data DIR")
    try:
        args.device = pick_device(args.device)
    except ValueError as error:
        parser.error(f"--device {displayable(error)}")
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
    with counter:  # what training computes: the fast forward, with the fc6 fold where it pays
        fast_forward(model)(torch.randn(2, channels, size, size)).sum().backward()
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


def repeated_rates(step, batches, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Images per second of --steps timed steps, --repeats times (the first after --warmup untimed steps)."""
    rates = []
    for repeat in range(args.repeats):
        seconds = time_steps(step, batches, args.warmup if repeat == 0 else 0, args.steps, device)
        rates.append(args.steps * args.batch_size / seconds)
    return rates


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """What this device does on a large matrix product in `dtype` (TFLOP/s), measured now: the ceiling that
    training's TFLOP/s are read against (a GPU's datasheet peak is rarely reached)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    repeats = 20 if device.type == "cuda" else 3
    a @ b  # warm-up: kernel selection
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def forever(make_batches):
    """Batches without end: a new epoch (new shuffle) whenever one runs out."""
    epoch = 0
    while True:
        yield from make_batches(epoch)
        epoch += 1


def load_or_exit(args: argparse.Namespace, loader: str) -> Data:
    """load_data for our pipeline, a DataError as one line naming the flag."""
    # The data flags named as DataConfig's fields; one batch of validation images (only the training batches are timed).
    config = DataConfig.from_settings(vars(args), val_size=args.batch_size, loader=loader)
    try:
        return load_data(config, args.device)
    except DataError as error:
        raise SystemExit(
            f"error: --{error.setting.replace('_', '-')} {displayable(getattr(args, error.setting))}: "
            f"{displayable(error)}"
        ) from None


def run_ours(args: argparse.Namespace) -> dict:
    device = args.device
    configure_device(device, deterministic=False)  # as train.py does: cuDNN autotuning, TF32; the CPU's malloc
    start = time.perf_counter()
    data = load_or_exit(args, args.loader)
    train, classes, preprocess, preset = data.train, data.classes, data.preprocess, data.augment
    setup_seconds = time.perf_counter() - start
    amp_dtype = pick_precision(args.amp, device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = AlexNet(num_classes=len(classes), in_channels=preprocess.in_channels, **MODELS[args.model])
    model = model.to(device, memory_format=memory_format)
    forward = fast_forward(model)  # as train.py trains (speedups.py)
    forward = torch.compile(forward) if args.compile else forward
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, fused=fused or None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    augment_rng = torch.Generator().manual_seed(0)

    def step(batch: tuple) -> None:
        images, labels = batch
        x = train_transform(images, preset, augment_rng, memory_format)
        train_step(forward, F.cross_entropy, optimizer, scaler, x, labels, amp_dtype)  # train.py's step

    batches = forever(lambda epoch: train.batches(seed=epoch))
    rates = repeated_rates(step, batches, args, device)
    precision = "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", "") + " autocast"
    return {
        "images_per_second": statistics.median(rates),
        "images_per_second_runs": rates,
        "precision": precision,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None,
        "matmul_tflops": matmul_tflops(device, amp_dtype or torch.float32),
        "peak_memory_mb": peak_memory_mb(device),
        "setup_seconds": setup_seconds,
        "train_images": len(train),
        "flops_per_image": train_flops_per_image(model, preprocess.in_channels, args.image_size),
        "mean": preprocess.mean,
        "std": preprocess.std,
        "settings": f"{train.kind}, {preset.kind} on the device, "
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


def baseline_loader(args: argparse.Namespace, mean: list[float], std: list[float]) -> tuple:
    """The conventional dataset and DataLoader: PIL transforms per image in --workers processes."""
    import torchvision.transforms as T  # the classic (v1) transforms of pytorch/examples

    transform = T.Compose(
        [T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )
    dataset = baseline_dataset(args, transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=args.device.type == "cuda",
        drop_last=len(dataset) > args.batch_size,
        persistent_workers=args.workers > 0,
    )
    return dataset, loader


def run_baseline(args: argparse.Namespace, mean: list[float], std: list[float]) -> dict:
    device = args.device
    torch.backends.cudnn.benchmark = True  # as pytorch/examples' ImageNet script does (on CUDA)
    start = time.perf_counter()
    dataset, loader = baseline_loader(args, mean, std)
    setup_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    channels = len(mean)
    num_classes = len(dataset.classes) if hasattr(dataset, "classes") else 10
    model = AlexNet(num_classes=num_classes, in_channels=channels, **MODELS[args.model]).to(device)
    forward = fast_forward(model)  # the same network computed the same way as ours: only the pipeline differs
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

    def step(batch: tuple) -> None:
        images, labels = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(forward(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the running-average meter of pytorch/examples: one host sync per step

    batches = forever(lambda epoch: loader)
    rates = repeated_rates(step, batches, args, device)
    return {
        "images_per_second": statistics.median(rates),
        "images_per_second_runs": rates,
        "peak_memory_mb": peak_memory_mb(device),
        "setup_seconds": setup_seconds,
        "settings": f"{type(dataset).__name__} + PIL transforms, DataLoader({args.workers} workers), fp32, NCHW, SGD",
    }


# ----------------------------------------------------------------------------------------------
# --loader-only: the data alone.


def delivery_rate(next_batch, images: int, device: torch.device, untimed: int) -> float:
    """Images per second that next_batch() puts on the device, after `untimed` batches (every worker started)."""
    for _ in range(untimed):
        next_batch()
    sync(device)
    start, delivered = time.perf_counter(), 0
    while delivered < images:
        delivered += len(next_batch())
    sync(device)
    return delivered / (time.perf_counter() - start)


def run_conventional_loader(args: argparse.Namespace) -> dict:
    """ImageFolder + PIL transforms + DataLoader, each batch copied to the device."""
    _, loader = baseline_loader(args, IMAGENET_MEAN, IMAGENET_STD)
    batches = forever(lambda epoch: loader)
    copy = lambda: next(batches)[0].to(args.device, non_blocking=True)
    rate = delivery_rate(copy, args.loader_images, args.device, untimed=max(2, args.workers))
    return {"images_per_second": rate}


def run_our_loader(args: argparse.Namespace) -> dict:
    """Our streamed or packed batches (args.only), augmented on the device as train.py does."""
    packed_before = set(packs_dir(DataConfig(data_root=args.data_root, pack_dir=args.pack_dir)).glob("*/pack.json"))
    configure_device(args.device, deterministic=False)  # as train.py does
    start = time.perf_counter()
    data = load_or_exit(args, args.only)
    result = {"setup_seconds": time.perf_counter() - start}
    if args.only == "packed":
        folders = [data.train.files.path, data.val.files.path]
        result["pack_bytes"] = sum(f.stat().st_blocks * 512 for folder in folders for f in folder.iterdir())
        result["packed_now"] = any(folder / "pack.json" not in packed_before for folder in folders)
        result["decoder"] = data.train.decoder if args.pack_format == "jpeg" else None
        if args.cold:  # what an epoch of a split larger than the page cache reads: the disk
            result["evicted_bytes"] = sum(evict_from_page_cache(path) for path in data.train.files.path.iterdir())
    rng, batches = torch.Generator().manual_seed(0), forever(lambda epoch: data.train.batches(seed=epoch))

    def next_batch() -> torch.Tensor:
        return train_transform(next(batches)[0], data.augment, rng, torch.channels_last)

    result["images_per_second"] = delivery_rate(next_batch, args.loader_images, args.device, max(2, args.workers))
    return result


def evict_from_page_cache(path: Path) -> int:
    """Ask the kernel to drop a file's cached pages (clean ones go; no root needed) -> the file's size."""
    with open(path, "rb") as file:
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path.stat().st_size


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
    if args.loader_only and args.only:
        print(json.dumps(run_conventional_loader(args) if args.only == "baseline" else run_our_loader(args)))
        return
    if args.only == "ours":
        print(json.dumps(run_ours(args)))
        return
    if args.only == "baseline":
        stats = json.loads(args.stats)
        print(json.dumps(run_baseline(args, stats["mean"], stats["std"])))
        return

    def child(*extra: str) -> dict:
        """One pipeline in a fresh process: its own memory, no state shared with the other."""
        which = {"baseline": "conventional"}.get(extra[1], extra[1])
        try:
            command = [sys.executable, __file__, *argv, *extra]
            result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"error: the {which} run did not finish within --timeout {args.timeout:g} s") from None
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
            raise SystemExit(f"error: the {which} run failed: {displayable(last)}")  # its last line: the error itself
        return json.loads(result.stdout.strip().splitlines()[-1])

    if args.loader_only:
        report_loaders(args, child)
        return
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


def report_loaders(args: argparse.Namespace, child) -> None:
    """--loader-only: the three loaders, one after the other, each in its own process."""
    conventional, stream = child("--only", "baseline"), child("--only", "stream")
    packed, jpeg = child("--only", "packed", "--pack-format", "raw"), child("--only", "packed", "--pack-format", "jpeg")
    result = {
        "conventional_images_per_second": conventional["images_per_second"],
        "stream_images_per_second": stream["images_per_second"],
        "packed_images_per_second": packed["images_per_second"],
        "packed_jpeg_images_per_second": jpeg["images_per_second"],
        "packed_vs_conventional": packed["images_per_second"] / conventional["images_per_second"],
        "workers": args.workers,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "images": args.loader_images,
        "augment": args.augment,
        "device": str(args.device),
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "data": args.data,
        "pack_bytes": packed["pack_bytes"],
        "pack_seconds": packed["setup_seconds"] if packed["packed_now"] else None,  # None: packed by an earlier run
        "pack_jpeg_bytes": jpeg["pack_bytes"],
        "pack_jpeg_seconds": jpeg["setup_seconds"] if jpeg["packed_now"] else None,
        "packed_jpeg_decoder": jpeg["decoder"],  # nvJPEG on the GPU on CUDA, else Pillow in the reading threads
        # The packs were just read or written, so they sit in the page cache unless --cold evicted them.
        "page_cache": "evicted before timing" if args.cold else "as left by packing or an earlier read (warm)",
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['device_name']} ({result['device']}), torch {result['torch']}, {args.data}, {args.image_size}px, "
          f"batch {args.batch_size}, {args.workers} workers, {args.loader_images} images each")  # fmt: skip
    print(f"conventional: {result['conventional_images_per_second']:8.0f} img/s")
    print(f"stream:       {result['stream_images_per_second']:8.0f} img/s")
    print(f"(the JPEG pack decoded by {result['packed_jpeg_decoder']}; packs {result['page_cache']})")
    for name, key, pack in (("packed:", "packed", "pack"), ("packed JPEG:", "packed_jpeg", "pack_jpeg")):
        seconds = result[f"{pack}_seconds"]
        packing = f"packed in {seconds:.1f} s" if seconds is not None else "packed before"
        print(f"{name:14}{result[f'{key}_images_per_second']:8.0f} img/s   pack: "
              f"{result[f'{pack}_bytes'] / 1e6:.0f} MB, {packing}")  # fmt: skip
    print(f"packed / conventional: {result['packed_vs_conventional']:.1f}x")


if __name__ == "__main__":
    main()
