"""Running the model: device, precision and distributed set-up, the training step, evaluation, prediction.

train.py and bench.py train with the same `train_step`; train.py's validation and `--evaluate`
use `evaluate`; inference.py (and notebooks) classify with `predict`. Nothing here synchronises
the host with the device inside a loop except where a number is needed.
"""

import ctypes
import datetime
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from image_files import load_image, pil_to_uint8
from presets import TTA_MODES, TTA_VIEWS, tta_transform
from speedups import cpu_flags, fast_forward

T = TypeVar("T")

# ----------------------------------------------------------------------------------------------
# Device, precision, processes.


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA, then Apple MPS, then CPU; an explicit name is checked for availability
    (ValueError, one line, otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name}: unknown device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: CUDA is not available on this machine; use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}: MPS is not available on this machine; use cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}: unsupported; use auto, cpu, cuda, cuda:N or mps")
    return device


def reuse_freed_memory() -> bool:
    """Have glibc's malloc reuse freed memory instead of mapping fresh pages each time (Linux); whether it applied.

    A CPU training step allocates and frees the same large buffers every time (a batch of 64
    float images at 224 px is 38 MB, conv1's output more). glibc serves blocks over 32 MB with
    fresh pages from the kernel, and the first touch of each 4 KB page is a page fault: measured on
    our 2-core VM, normalising a batch cost 0.21 ms per image that way and 0.04 ms with the memory
    reused, and a training step at 224 px 20.6 ms per image against 17.9 ms. The process then
    keeps most of its peak memory instead of returning it between steps. (Not all: allocating,
    filling and freeing one block three times, the third time still faulted on 22 of 38 MB, and
    on none of 64 MB; without this call, on all of either.)
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt's parameter numbers (malloc.h)
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (which sets RANK, LOCAL_RANK and WORLD_SIZE),
    join the process group: NCCL with one GPU per process, gloo on CPUs. Plain python: (0, 1)."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "mps":
        raise ValueError("torchrun on Apple MPS is not supported; use the CPU")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process, pinned to its local rank
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return rank, world_size, device


def configure_device(device: torch.device, deterministic: bool) -> torch.memory_format:
    """Backend settings for speed, or for repeatable results; the memory format models and batches use."""
    if deterministic:
        # The same result for the same input on the same machine: deterministic kernels only (cuDNN's
        # and cuBLAS's included); the model pools with matrix products then (see speedups.py).
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        # Fixed input size: let cuDNN time its kernels and keep the fastest (which may differ run to run).
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for whatever stays in fp32
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        reuse_freed_memory()  # the batches and activations of every step, without page faults
    # channels_last lets oneDNN (CPU) and cuDNN use their fastest convolution kernels.
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


# Rank 0 may spend hours preparing data that the other processes then read (laying out, listing or
# packing ImageNet) while they wait: their barrier is given a day, not the process group's default
# timeout (10 minutes with NCCL), after which they would abort the run.
PREPARATION_TIMEOUT = datetime.timedelta(hours=24)


def first_on_rank_0(work: Callable[[], T], rank: int, world_size: int) -> T:
    """work() on rank 0, then on the other processes (under torchrun), which wait for it in a gloo
    barrier with PREPARATION_TIMEOUT (on the CPU: no GPU collective is held open meanwhile)."""
    if world_size == 1:
        return work()
    group = dist.new_group(backend="gloo", timeout=PREPARATION_TIMEOUT)  # every process creates it, together
    if rank != 0:
        dist.barrier(group=group)
    result = work()
    if rank == 0:
        dist.barrier(group=group)
    return result


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
    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a run on `device`: the GPU's free memory on CUDA, else the host's available
    memory (Linux's MemAvailable, or free pages where sysconf tells); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # macOS has no SC_AVPHYS_PAGES
        return None


def training_memory(parameters: int, batch_size: int, channels: int, image_size: int) -> int:
    """A lower bound of the bytes a training step needs: the fp32 weights, gradients and momentum,
    and one batch's fp32 input (and its gradient-free copy) and conv1 output (kept for backward,
    its gradient and the ReLU's mask). Deeper layers and workspaces come on top."""
    conv1 = max((image_size - 11) // 4 + 1, 1)
    per_image = 4 * (2 * channels * image_size**2 + 3 * 96 * conv1**2)
    return 3 * 4 * parameters + batch_size * per_image


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision in `amp_dtype` (None: fp32, autocast off)."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def sync(device: torch.device) -> None:
    """Wait for the device to finish its queued work (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ----------------------------------------------------------------------------------------------
# Training and evaluation.


def train_step(
    forward,
    criterion,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    labels: torch.Tensor,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch (bench.py times this same step) -> (logits, loss), without a host sync."""
    with autocast(x.device, amp_dtype):
        logits = forward(x)
        loss = criterion(logits.float(), labels)  # softmax and loss in float32 even under autocast
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # fp16: scaled so that small gradients do not flush to zero
    scaler.step(optimizer)
    scaler.update()
    return logits, loss


def accuracy_counts(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k scores, for each k (as tensors, no sync)."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (B, k)
    hits = top == labels[:, None]
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, amp_dtype: torch.dtype | None, num_classes: int, world_size: int) -> dict:
    """Loss, top-1 and top-5 accuracy and the confusion matrix over normalised (images, labels)
    batches, exact over all processes. Images (B, K, C, S, S) are K views each (test-time
    augmentation: flips, ten crops): their softmax probabilities are averaged. The model is left
    in the mode it came in."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits, count
    count = 0
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    for images, labels in batches:
        with autocast(device, amp_dtype):
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
    confusion = confusion.view(num_classes, num_classes).cpu()
    return {"loss": loss_sum / count, "top1": top1 / count, "top5": top5 / count, "confusion": confusion}


# ----------------------------------------------------------------------------------------------
# Prediction (inference.py and notebooks).


def class_log_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the classes, in float32, of (B, C, S, S) images -> (B, num_classes); for
    (B, K, C, S, S), K views of each image (test-time augmentation), of their averaged probabilities."""
    views = images.shape[1] if images.ndim == 5 else 1
    log_probs = model(images.flatten(0, 1) if views > 1 else images).float().log_softmax(dim=1)
    if views > 1:  # log of the mean of the views' softmax, without leaving log space
        log_probs = log_probs.view(-1, views, log_probs.shape[1]).logsumexp(dim=1) - math.log(views)
    return log_probs


@torch.no_grad()
def predict(
    model: torch.nn.Module, meta: dict, images: list, topk: int = 5, batch_size: int = 64, tta: str | None = None
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) pairs, best first, for each image.

    `images` may mix file paths, PIL images and uint8 tensors (C, H, W); tensors of another dtype
    are taken as already preprocessed model inputs: (C, S, S), or (K, C, S, S) views with a `tta`.
    A path that cannot be read as an image raises BadImageError.
    `tta`: None or "none" classifies the centre crop (eval_transform); "flip" averages the softmax
    of the crop and its mirror, "10crop" over the paper's ten crops (tta_transform), 2 and 10
    times the work. `batch_size` counts model inputs: with K views, batch_size // K images (at
    least one) go through at once.
    """
    if tta not in (None, *TTA_MODES):
        raise ValueError(f"tta must be None or one of {TTA_MODES}, got {tta!r}")
    tta = tta or "none"
    views = TTA_VIEWS[tta]
    # A model without parameters (export.OnnxRuntimeModel, an ONNX file run by ONNX Runtime) takes CPU tensors.
    device = next(model.parameters(), torch.empty(0)).device
    preprocess, classes = meta["preprocess"], meta["classes"]
    inputs = []
    for image in images:
        if isinstance(image, (str, Path)):
            image = load_image(image, preprocess.in_channels)
        elif isinstance(image, Image.Image):
            image = pil_to_uint8(image, preprocess.in_channels)
        elif image.dtype != torch.uint8 and image.ndim != (3 if views == 1 else 4):
            expected = "(C, S, S)" if views == 1 else f"({views}, C, S, S) views with tta={tta!r}"
            raise ValueError(f"a preprocessed input must be {expected}, got shape {tuple(image.shape)}")
        inputs.append(tta_transform(image, preprocess, tta) if image.dtype == torch.uint8 else image)
    images_per_batch = max(1, batch_size // views)
    forward = fast_forward(model)  # an AlexNet: pooled by matrix products on MPS, fc6 folded on small inputs
    results = []
    for start in range(0, len(inputs), images_per_batch):
        batch = torch.stack(inputs[start : start + images_per_batch]).to(device)  # (B, C, S, S) or (B, 10, C, S, S)
        probabilities = class_log_probabilities(forward, batch).exp()  # (B, num_classes)
        values, indices = probabilities.topk(min(topk, len(classes)), dim=1)
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            results.append([(classes[i], p) for i, p in zip(row_indices, row_values)])
    return results
