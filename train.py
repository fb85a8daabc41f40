"""Train AlexNet on the built-in shapes dataset, MNIST, Fashion-MNIST, CIFAR or an image folder.

Examples:
    python train.py                                      # built-in shapes, offline, ~5 min on 2 CPU cores
    python train.py --dataset mnist --download           # torchvision datasets live under data/
    python train.py --data /path/to/imagenet --epochs 90 # DIR/train/<class>/*, DIR/val/<class>/*
    python train.py --data ../shared/data/cifar10 --schedule onecycle --label-smoothing 0.1  # see README
    python train.py --resume runs/shapes-20261122-101500 # continue a run (its last.pt)
    python train.py --epochs 1 --max-steps 5             # smoke test: 5 steps per epoch

Each run writes runs/<name>/: last.pt and best.pt (everything inference.py needs, plus optimiser
state for --resume), metrics.jsonl (one line per epoch), curves.png and, for in-memory datasets,
a few validation images under samples/ to try inference.py on.

Data that fits in memory (everything but ImageNet-sized folders) is decoded once, kept on the
training device as uint8 and augmented there a batch at a time: see data_pipeline.py.
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
import torchvision.transforms.v2.functional as TF

from alexnet import MIN_INPUT_SIZE, AlexNet
from data_pipeline import AUGMENTATIONS, DATASETS, DEFAULT_IMAGE_SIZE, InMemory, load_data, save_atomically, train_transform_batch
from inference import eval_transform


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    parser.add_argument("--dataset", default="shapes", choices=DATASETS, help="built-in or torchvision dataset")
    parser.add_argument("--data", default=None, help="image folder in ImageNet layout: DIR/train/<class>/*, DIR/val/<class>/* (overrides --dataset)")
    parser.add_argument("--data-root", default="data", help="where torchvision datasets and decoded-image caches are stored")
    parser.add_argument("--download", action="store_true", help="download the torchvision dataset if it is missing (needs network)")
    parser.add_argument("--image-size", type=int, default=None, help=f"model input size; default per dataset: {DEFAULT_IMAGE_SIZE}")
    parser.add_argument("--in-channels", type=int, default=None, choices=[1, 3], help="default: from the dataset (MNIST 1, others 3)")
    parser.add_argument("--train-size", type=int, default=12000, help="built-in dataset: number of training images")
    parser.add_argument("--val-size", type=int, default=2000, help="built-in dataset: number of validation images")
    parser.add_argument("--augment", default="auto", choices=AUGMENTATIONS, help="auto: pad-and-crop for small images (CIFAR, MNIST), random resized crops for photos; flips except MNIST")
    parser.add_argument("--loader", default="auto", choices=["auto", "memory", "stream"], help="image folders: decode once and keep in memory, or stream with DataLoader workers; auto: memory if it fits in 8 GiB")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes for image folders")
    # model
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout on the two hidden FC layers")
    # optimisation
    parser.add_argument("--epochs", type=int, default=8, help="number of epochs")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    parser.add_argument("--schedule", default="step", choices=["step", "onecycle"], help="step: warm-up, then StepLR; onecycle: linear warm-up to --lr, then linear decay to zero")
    parser.add_argument("--lr-step", type=int, default=6, help="step schedule: multiply the lr by --lr-gamma every this many epochs")
    parser.add_argument("--lr-gamma", type=float, default=0.1, help="step schedule: StepLR factor")
    parser.add_argument("--warmup-steps", type=int, default=200, help="linear lr warm-up from lr/100 (step) or lr/25 (onecycle) over this many steps")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each epoch (training and validation) after this many batches: for smoke tests")
    # device and precision
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="mixed precision; auto: bf16 where it is fast (CUDA with bf16, CPUs with AVX-512 bf16/AMX), fp16 on older GPUs, else off")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (minutes of compilation; pays off on long GPU runs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data generation, init, order, augmentation)")
    # output
    parser.add_argument("--out-dir", default="runs", help="directory holding all runs")
    parser.add_argument("--name", default=None, help="run name (default: <dataset>-<date>-<time>)")
    parser.add_argument("--resume", default=None, help="checkpoint (last.pt) or run directory to continue from")
    parser.add_argument("--log-interval", type=int, default=50, help="steps between progress lines (a progress bar on a terminal)")
    args = parser.parse_args(argv)

    for flag in ("epochs", "batch_size", "train_size", "val_size", "lr_step", "log_interval"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.workers < 0 or args.warmup_steps < 0:
        parser.error(f"--workers and --warmup-steps cannot be negative, got {args.workers} and {args.warmup_steps}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.image_size is not None and args.image_size < MIN_INPUT_SIZE:
        parser.error(f"--image-size must be at least {MIN_INPUT_SIZE} (AlexNet's smallest input), got {args.image_size}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if not 0 <= args.label_smoothing < 1:
        parser.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
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


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (as tensors, no sync)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (B, k)
    hits = top == labels[:, None]
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, amp_dtype: torch.dtype | None, device: torch.device) -> dict:
    """Loss, top-1 and top-5 accuracy over normalised (images, labels) batches."""
    model.eval()
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits
    count = 0
    for images, labels in batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        totals += torch.stack([loss, *accuracy_counts(logits, labels)]).double()
        count += len(labels)
    model.train()
    loss_sum, top1, top5 = (totals / max(count, 1)).tolist()  # one host sync for the whole evaluation
    return {"loss": loss_sum, "top1": top1, "top5": top5}


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    save_atomically(state, path)


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


def progress(step: int, total: int, loss: float, top1: float, seconds: float, interactive: bool) -> None:
    """A progress bar on a terminal, a plain line otherwise."""
    if interactive:
        done = int(30 * step / total)
        print(f"\r  [{'=' * done}{' ' * (30 - done)}] {step}/{total}  loss {loss:.3f}  top-1 {100 * top1:5.1f}%  {seconds:.0f}s", end="", flush=True)
        if step == total:
            print("\r" + " " * 100 + "\r", end="", flush=True)
    else:
        print(f"  step {step}/{total}  loss {loss:.3f}  top-1 {100 * top1:5.1f}%  {seconds:.0f}s", flush=True)


def save_samples(images: torch.Tensor, labels: torch.Tensor, classes: list[str], folder: Path, count: int = 8) -> None:
    """A few validation images (spread over the set) as PNG files named after their class, for the inference demo."""
    folder.mkdir(exist_ok=True)
    for i, index in enumerate(torch.linspace(0, len(labels) - 1, min(count, len(labels))).long().tolist()):
        name = classes[int(labels[index])].replace("/", "_").replace(" ", "_")
        TF.to_pil_image(images[index].cpu()).save(folder / f"{i:02d}_{name}.png")


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)

    # Device, seed, precision ------------------------------------------------------------------
    device = args.device
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    amp_dtype = pick_precision(args.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for whatever stays in fp32
        torch.backends.cudnn.allow_tf32 = True
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
    args.image_size = args.image_size or DEFAULT_IMAGE_SIZE[source]
    if source == "shapes":
        print(f"Training on the built-in shapes dataset (generated in code, {args.train_size} train / "
              f"{args.val_size} val images at {args.image_size}px).")
        print("For real data: --dataset mnist|fashion-mnist|cifar10|cifar100 [--download], or --data DIR "
              "(DIR/train/<class>/*, DIR/val/<class>/*). See python train.py --help.")
    else:
        print(f"Training on {args.data or f'{source} from {args.data_root}/'} at {args.image_size}px")
    start = time.perf_counter()
    train_data, val_data, classes, preprocess, augment = load_data(
        source, data_dir=args.data, data_root=args.data_root, download=args.download, image_size=args.image_size,
        channels=args.in_channels, train_size=args.train_size, val_size=args.val_size, augment=args.augment,
        loader=args.loader, workers=args.workers, batch_size=args.batch_size, seed=args.seed, device=device,
    )
    channels = preprocess["in_channels"]
    print(f"{len(train_data)} training and {len(val_data)} validation images, {len(classes)} classes, {channels} channel(s), "
          f"{'in memory' if isinstance(train_data, InMemory) else 'streamed'}, ready in {time.perf_counter() - start:.1f}s; "
          f"device {device}, {'fp32' if amp_dtype is None else str(amp_dtype).replace('torch.', '') + ' autocast'}")
    steps_per_epoch = train_data.num_batches()
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    augment_rng = torch.Generator()  # crop boxes and flips (drawn on the CPU): reseeded every epoch

    # Model ------------------------------------------------------------------------------------
    model = AlexNet(num_classes=len(classes), in_channels=channels, dropout=args.dropout)
    model = model.to(device, memory_format=memory_format)
    # torch.compile fuses the ReLUs, dropouts and casts into the matmuls and convolutions around them.
    forward = torch.compile(model) if args.compile else model

    # Optimiser and schedule -------------------------------------------------------------------
    # Fused SGD: one kernel for the whole update of 58 M parameters (3x faster than a loop on CPU).
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                weight_decay=args.weight_decay, fused=fused or None)
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
        step_schedule = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=max(args.warmup_steps, 1))
        epoch_schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=args.lr_gamma)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    # Output -----------------------------------------------------------------------------------
    start_epoch, best_top1, metrics = 1, -1.0, []
    if resume is not None:
        run_dir = resume_path.parent
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        step_schedule.load_state_dict(resume["step_schedule"])
        if epoch_schedule is not None:
            epoch_schedule.load_state_dict(resume["epoch_schedule"])
        scaler.load_state_dict(resume["scaler"])
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
    if isinstance(val_data, InMemory) and resume is None:
        save_samples(val_data.images, val_data.labels, classes, run_dir / "samples")

    def checkpoint(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "model_config": model.config,
            "classes": classes,
            "preprocess": preprocess,
            "optimizer": optimizer.state_dict(),
            "step_schedule": step_schedule.state_dict(),
            "epoch_schedule": epoch_schedule.state_dict() if epoch_schedule is not None else None,
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "best_top1": best_top1,
            "args": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()},
            "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate()},
        }

    # Loop -------------------------------------------------------------------------------------
    interactive = sys.stdout.isatty()
    show_every = 10 if interactive else args.log_interval  # reading the loss syncs with the device
    step = step_schedule.last_epoch
    for epoch in range(start_epoch, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        print(f"Epoch {epoch}/{args.epochs}  lr {lr:.4g}")
        model.train()
        start = time.perf_counter()
        augment_rng.manual_seed(args.seed * 1000 + epoch)
        # Running totals stay on the device: loss sum, top-1 hits, first step with a non-finite loss.
        totals = torch.tensor([0.0, 0.0, -1.0], device=device, dtype=torch.float64)
        seen = 0
        for i, (images, labels) in enumerate(train_data.batches(shuffle=True, seed=args.seed * 1000 + epoch), start=1):
            x = train_transform_batch(images, augment, augment_rng, memory_format)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = forward(x)
                loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if args.schedule == "onecycle" and step < total_steps or args.schedule == "step" and step < args.warmup_steps:
                step_schedule.step()
            step += 1
            loss = loss.detach()
            first_bad = torch.where((totals[2] < 0) & ~loss.isfinite(), step, totals[2])
            totals = torch.stack([totals[0] + loss * len(labels), totals[1] + accuracy_counts(logits.detach(), labels, ks=(1,))[0], first_bad])
            seen += len(labels)
            if i % show_every == 0 or i == steps_per_epoch:
                loss_sum, hits, bad_step = totals.tolist()  # the only host sync of the loop
                if bad_step >= 0:
                    last = f"; the last good checkpoint is {run_dir / 'last.pt'}" if (run_dir / "last.pt").exists() else ""
                    raise SystemExit(f"error: the training loss became {loss_sum / seen} at epoch {epoch}, step {int(bad_step)}{last}; "
                                     f"lower --lr (now {args.lr}) or raise --warmup-steps (now {args.warmup_steps})")
                progress(i, steps_per_epoch, loss_sum / seen, hits / seen, time.perf_counter() - start, interactive)
            if i >= steps_per_epoch:
                break
        train_seconds = time.perf_counter() - start
        train_loss, train_top1 = totals[0].item() / seen, totals[1].item() / seen
        val_source = ((eval_transform(images, preprocess).contiguous(memory_format=memory_format), labels)
                      for images, labels in val_data.batches(shuffle=False))
        if args.max_steps:
            val_source = (batch for _, batch in zip(range(args.max_steps), val_source))
        val = evaluate(forward, val_source, amp_dtype, device)
        if epoch_schedule is not None:
            epoch_schedule.step()
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
