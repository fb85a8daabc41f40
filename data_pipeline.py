"""The data pipeline shared by train.py and bench.py: datasets as uint8 tensors, augmented on the device.

Every dataset becomes batches of uint8 images of one stored size (N, C, R, R) on the training
device; augmentation (crop, resize, flip) and normalisation then run on the whole batch at once
as tensor ops, on the GPU when there is one. There are two ways to get those batches:

- In memory (datasets that fit: MNIST, CIFAR, the built-in shapes, small image folders): the files
  are decoded once into one uint8 tensor, cached under data/cache/ so the next run skips decoding,
  and kept on the device. No PIL, no worker processes while training.
- Streaming (large image folders such as ImageNet): DataLoader workers decode each file with
  reduced-size JPEG decoding, resize its shorter side to R and cut the central R x R square, all
  in uint8; pinned memory and prefetching hide the transfer.

R is the paper's 256 for 224-pixel crops ("we down-sampled the images to a fixed resolution of
256 x 256"), or the native size of small images such as CIFAR's 32 x 32, which are upscaled per
batch on the device instead.
"""

import hashlib
import json
import math
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from inference import IMAGE_EXTENSIONS, BadImageError, open_image, pil_to_uint8
from shapes import CLASSES as SHAPE_CLASSES
from shapes import make_shapes

DATASETS = ["shapes", "mnist", "fashion-mnist", "cifar10", "cifar100"]
# Default input size per dataset. Small images are upscaled so that AlexNet's stride-4 conv1 and
# three max-pools have something to work on; 67 is the smallest size the network accepts and keeps
# CPU training fast. GPU users may prefer --image-size 227 (the paper's arithmetic) for CIFAR.
DEFAULT_IMAGE_SIZE = {"shapes": 67, "mnist": 67, "fashion-mnist": 67, "cifar10": 67, "cifar100": 67, "folder": 224}
AUGMENTATIONS = ["auto", "crop", "resized-crop", "none"]
MEMORY_LIMIT_BYTES = 8 * 2**30  # image folders up to this size (as uint8) are held in memory
CACHE_VERSION = 1  # bump when decode_for_store changes, so that old caches are not reused


# ----------------------------------------------------------------------------------------------
# Batched augmentation on the device. The random numbers (a crop box and a flip per image) come
# from a generator on the CPU: the host never waits for the device to hand them over.


def crop_boxes(n: int, height: int, width: int, spec: dict, generator: torch.Generator) -> torch.Tensor:
    """Random crop boxes (n, 4) as whole-pixel (left, top, width, height), following `spec`.

    "crop": a crop_size square in the image padded by crop_padding (CIFAR's pad-4-and-crop; with
    padding 0, the paper's random 224 crops of the 256 image). "resized-crop": torchvision's
    RandomResizedCrop: area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`;
    a box that would not fit is shrunk to fit instead of drawn again. "none": the whole image.
    """
    if spec["augment"] == "crop":
        size, pad = spec["crop_size"], spec["crop_padding"]
        left = torch.randint(-pad, width - size + pad + 1, (n,), generator=generator)
        top = torch.randint(-pad, height - size + pad + 1, (n,), generator=generator)
        return torch.stack([left, top, torch.full((n,), size), torch.full((n,), size)], dim=1)
    if spec["augment"] == "resized-crop":
        low, high = spec["scale"]
        area = height * width * (low + (high - low) * torch.rand(n, generator=generator))
        log_low, log_high = math.log(spec["ratio"][0]), math.log(spec["ratio"][1])
        ratio = torch.exp(log_low + (log_high - log_low) * torch.rand(n, generator=generator))
        w = torch.sqrt(area * ratio).round().clamp(1, width).long()
        h = torch.sqrt(area / ratio).round().clamp(1, height).long()
        left = (torch.rand(n, generator=generator) * (width - w + 1)).long()
        top = (torch.rand(n, generator=generator) * (height - h + 1)).long()
        return torch.stack([left, top, w, h], dim=1)
    return torch.tensor([[0, 0, width, height]]).expand(n, 4)


def crops_by_grid(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int, padding_mode: str) -> torch.Tensor:
    """All crops of a batch resized (bilinear) and mirrored by one grid_sample -> float (N, C, S, S), 0-255.

    For GPUs: one kernel for the whole batch, where crop-by-crop work would launch hundreds of
    small ones. Sampling points are pixel centres, as in F.interpolate(align_corners=False), so
    a box the size of the output is an exact copy; outside the image: zeros or the border pixel.
    No antialiasing, which only matters for crops much larger than `size`.
    """
    n, _, height, width = images.shape
    # The random numbers are drawn on the CPU (the same stream on every device). Copied with
    # non_blocking: from pageable memory CUDA stages them at once, without waiting for the GPU.
    left, top, w, h = boxes.to(images.device, torch.float32, non_blocking=True).unbind(1)
    sign = 1.0 - 2.0 * flips.to(images.device, torch.float32, non_blocking=True)  # a negative x scale mirrors the box
    # Output pixel j of an S-pixel row samples the box at the fraction (j + 0.5) / S of its width,
    # in grid_sample's coordinates, where -1 and 1 are the outer edges of the image.
    steps = (torch.arange(size, device=images.device) + 0.5) / size * 2 - 1  # (S,) in (-1, 1)
    grid_x = ((2 * left + w)[:, None] + sign[:, None] * w[:, None] * steps) / width - 1  # (N, S)
    grid_y = ((2 * top + h)[:, None] + h[:, None] * steps) / height - 1  # (N, S)
    grid = torch.stack([grid_x[:, None, :].expand(n, size, size), grid_y[:, :, None].expand(n, size, size)], dim=-1)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def crops_on_cpu(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """The same crops on a CPU, in uint8: views of the stored images, flipped while still small,
    resized with torchvision's vectorised uint8 resize (antialiased, like RandomResizedCrop)."""
    if pad:
        images = F.pad(images, [pad] * 4)  # black borders, as torchvision's RandomCrop(padding=...)
    crops = []
    for i, ((left, top, w, h), flip) in enumerate(zip((boxes + torch.tensor([pad, pad, 0, 0])).tolist(), flips.tolist())):
        crop = images[i, :, top : top + h, left : left + w]  # a view: no copy yet
        crops.append(crop.flip(-1) if flip else crop)
    if len({crop.shape for crop in crops}) == 1:  # one crop size: resize the whole batch at once
        x = torch.stack(crops)
        return TF.resize(x, [size, size], antialias=True) if x.shape[-1] != size or x.shape[-2] != size else x
    return torch.stack([TF.resize(crop, [size, size], antialias=True) for crop in crops])


def train_transform_batch(
    images: torch.Tensor,
    spec: dict,
    generator: torch.Generator,
    memory_format: torch.memory_format = torch.contiguous_format,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Augment a uint8 batch (N, C, H, W) on its device: crop, flip, resize to (S, S), normalise,
    PCA lighting noise -> float32.

    With several processes the random numbers are drawn for the whole global batch (N x
    world_size) on every process, which keeps its own slice: an image gets the same crop whether
    one process trains on it or several.
    """
    n, _, height, width = images.shape
    mine = slice(rank * n, (rank + 1) * n)
    boxes = crop_boxes(n * world_size, height, width, spec, generator)[mine]
    flips = (torch.rand(n * world_size, generator=generator) < 0.5)[mine] if spec["flip"] else torch.zeros(n, dtype=torch.bool)
    pad = spec["crop_padding"] if spec["augment"] == "crop" else 0
    if images.device.type == "cpu":
        x = crops_on_cpu(images, boxes, flips, spec["image_size"], pad).contiguous(memory_format=memory_format)
    else:
        x = crops_by_grid(images, boxes, flips, spec["image_size"], "zeros" if pad else "border").contiguous(memory_format=memory_format)
    x = normalize(x, spec["mean"], spec["std"])
    if spec["lighting"]:
        alpha = spec["lighting"] * torch.randn(n * world_size, 3, generator=generator)[mine]
        shift = lighting_shift(alpha, spec["eigval"], spec["eigvec"]) / torch.tensor(spec["std"])  # in normalised units
        x += shift.to(x.device, non_blocking=True)[:, :, None, None]
    return x


# The paper's "fancy PCA" colour augmentation: the principal components of ImageNet's RGB pixel
# values (pixels in [0, 1]), eigenvalues in decreasing order; column j of the eigenvector matrix
# belongs to eigenvalue j (some reimplementations pair them in reverse order).
IMAGENET_EIGVAL = [0.2175, 0.0188, 0.0045]
IMAGENET_EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


def lighting_shift(alpha: torch.Tensor, eigval: list[float], eigvec: list[list[float]]) -> torch.Tensor:
    """The RGB shift [p1, p2, p3] [alpha1 l1, alpha2 l2, alpha3 l3]^T of each image (alpha: (N, 3)) -> (N, 3)."""
    return (alpha * torch.tensor(eigval)) @ torch.tensor(eigvec).T


def pca_lighting_stats(images: torch.Tensor, limit: int = 2000) -> tuple[list[float], list[list[float]]]:
    """Eigenvalues (decreasing) and eigenvectors (columns) of the RGB covariance of uint8 images
    (N, 3, H, W) in [0, 1] units, over `limit` of them: the paper's PCA, on your own data."""
    total = torch.zeros(3, dtype=torch.float64)
    products = torch.zeros(3, 3, dtype=torch.float64)
    count = 0
    for chunk in images[:limit].split(100):  # in chunks: 2000 256px images as one float64 tensor would be 3 GB
        pixels = chunk.cpu().permute(1, 0, 2, 3).reshape(3, -1).double().div(255)  # (3, pixels)
        total += pixels.sum(dim=1)
        products += pixels @ pixels.T
        count += pixels.shape[1]
    mean = total / count
    covariance = (products - count * torch.outer(mean, mean)) / (count - 1)  # what torch.cov gives on all pixels at once
    eigval, eigvec = torch.linalg.eigh(covariance)  # increasing order
    return eigval.flip(0).tolist(), eigvec.flip(1).tolist()


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(x / 255 - mean) / std for uint8 (or float 0-255) images -> float32, in two passes over memory.
    (Not bf16 even under autocast: CPUs have no bf16 arithmetic for elementwise ops, only for matmuls.)"""
    scale = torch.tensor([1 / (255 * s) for s in std]).to(images.device, non_blocking=True).view(-1, 1, 1)  # no wait for the GPU
    shift = torch.tensor([-m / s for m, s in zip(mean, std)]).to(images.device, non_blocking=True).view(-1, 1, 1)
    return images.float().mul_(scale).add_(shift)


def channel_stats(images: torch.Tensor, limit: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) in [0, 1] units, over `limit` of them."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for chunk in images[:limit].split(500):  # in chunks: 10,000 float 256px images would be 8 GB
        x = chunk.cpu().double().div(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
        count += x[:, 0].numel()
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).mul(count / max(count - 1, 1)).sqrt()
    std = std.clamp(min=1 / 255)  # a channel that never varies (synthetic data): one grey level, not a division by zero
    return mean.tolist(), std.tolist()


# ----------------------------------------------------------------------------------------------
# Datasets as batches of uint8 images on the device.


def shard_order(n: int, batch_size: int, train: bool, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """The indices this process reads in an epoch, batch after batch.

    Training: a permutation fixed by `seed`, cut into global batches of batch_size x world_size
    (the last partial one dropped: equal shapes every step for cuDNN and torch.compile); process
    `rank` reads its own batch_size slice of each. With 2 processes, global batch i is exactly
    batch i of a single process with twice the batch size. Evaluation: every index exactly once
    over all processes, in file order, no padding (so metrics summed over processes are exact).
    """
    if not train:
        return torch.arange(rank, n, world_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    global_batch = batch_size * world_size
    if n < global_batch:  # a tiny dataset: one short batch (split over the processes)
        return order[rank::world_size]
    return order[: n // global_batch * global_batch].view(-1, world_size, batch_size)[:, rank].flatten()


class InMemory:
    """A labelled uint8 image tensor (N, C, R, R) on the device, served in batches."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, train: bool, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.train, self.rank, self.world_size = batch_size, train, rank, world_size

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self) -> int:
        return math.ceil(len(shard_order(len(self), self.batch_size, self.train, 0, self.rank, self.world_size)) / self.batch_size)

    def batches(self, seed: int = 0, start: int = 0):
        """(uint8 images, labels) batches from batch `start` on, shuffled by `seed` when training."""
        order = shard_order(len(self), self.batch_size, self.train, seed, self.rank, self.world_size).to(self.labels.device)
        for i in range(start * self.batch_size, len(order), self.batch_size):
            index = order[i : i + self.batch_size]
            yield self.images[index], self.labels[index]


class FolderFiles(torch.utils.data.Dataset):
    """Image files -> (uint8 (C, R, R) tensor or None, label, whether the file was unreadable), for DataLoader workers.

    With `fill` (streamed training), the next readable file takes an unreadable one's place: every
    batch stays full, so the processes under torchrun take the same number of steps (one short of
    a batch would leave the others waiting in DDP's all-reduce), and shapes stay fixed.
    """

    def __init__(self, samples: list[tuple[Path, int]], channels: int, store_size: int, fill: bool = False) -> None:
        self.samples, self.channels, self.store_size, self.fill = samples, channels, store_size, fill

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, bool]:
        for offset in range(16 if self.fill else 1):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return decode_for_store(path, self.channels, self.store_size), label, offset > 0
            except BadImageError as error:
                print(f"warning: skipping {error}", file=sys.stderr)
        return None, label, True


def collate_readable(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack a batch, leaving out the unreadable files (None) -> (images, labels, which were unreadable).

    One stacked tensor per batch, not one per image: workers share tensors with the main process
    through file descriptors, and thousands of small ones would exhaust the limit on open files.
    """
    readable = [(image, label) for image, label, _ in batch if image is not None]
    unreadable = torch.tensor([bad for _, _, bad in batch])
    if not readable:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), unreadable
    return torch.stack([image for image, _ in readable]), torch.tensor([label for _, label in readable]), unreadable


def ignore_ctrl_c(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves a checkpoint before stopping."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Streaming:
    """An image folder decoded by DataLoader workers, served as uint8 (N, C, R, R) batches on the device."""

    def __init__(self, files: FolderFiles, batch_size: int, train: bool, workers: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, max_bad_files: int = 10, bad_files: set[str] | None = None) -> None:
        self.files, self.batch_size, self.train, self.device = files, batch_size, train, device
        self.rank, self.world_size = rank, world_size
        # Unreadable files are found as they are read: counted (in a set that train and val share)
        # against the same limit as folders decoded into memory.
        self.max_bad_files, self.bad_files = max_bad_files, set() if bad_files is None else bad_files
        self.order = []  # the sampler: refilled in place every epoch, read by the persistent loader
        self.loader = torch.utils.data.DataLoader(
            files,
            batch_size=batch_size,
            sampler=self.order,
            num_workers=workers,
            collate_fn=collate_readable,
            worker_init_fn=ignore_ctrl_c,
            pin_memory=device.type == "cuda",  # page-locked buffers: asynchronous host-to-GPU copies
            persistent_workers=workers > 0,  # no worker start-up cost every epoch
            prefetch_factor=4 if workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self.files)

    def num_batches(self) -> int:
        return math.ceil(len(shard_order(len(self), self.batch_size, self.train, 0, self.rank, self.world_size)) / self.batch_size)

    def batches(self, seed: int = 0, start: int = 0):
        """(uint8 images, labels) batches on the device from batch `start` on, shuffled by `seed` when training."""
        order = shard_order(len(self), self.batch_size, self.train, seed, self.rank, self.world_size)[start * self.batch_size :].tolist()
        self.order[:] = order
        for i, (images, labels, unreadable) in enumerate(self.loader):
            if unreadable.any():
                batch = order[i * self.batch_size : (i + 1) * self.batch_size]
                self.bad_files.update(str(self.files.samples[j][0]) for j, bad in zip(batch, unreadable.tolist()) if bad)
                check_bad_files(self.bad_files, self.max_bad_files)
            if len(labels):  # not a batch of unreadable files only
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


# ----------------------------------------------------------------------------------------------
# Image folders: DIR/train/<class>/<image>, DIR/val/<class>/<image> (ImageNet layout).


def check_bad_files(bad: list[str] | set[str], max_bad_files: int) -> None:
    """One error line (SystemExit) when more image files are unreadable than --max-bad-files allows."""
    if len(bad) > max_bad_files:
        raise SystemExit(f"error: --data: {len(bad)} image files cannot be read (more than --max-bad-files {max_bad_files}), "
                         f"e.g. {min(bad)}; fix or remove them, or raise --max-bad-files")


def decode_for_store(path: Path, channels: int, size: int) -> torch.Tensor:
    """Decode an image file, resize its shorter side to `size` and cut the central square -> (C, size, size) uint8.

    The same pixels as torchvision's Resize(size) + CenterCrop(size) on the PIL image, except that
    JPEGs at least twice too large are decoded at a reduced scale first (libjpeg's DCT scaling:
    much faster, and the resize that follows smooths the difference away).
    """
    with open_image(path, draft_size=size) as image:
        if min(image.size) != size:
            image = TF.resize(image, size, antialias=True)
        return pil_to_uint8(TF.center_crop(image, size), channels)


def folder_samples(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) of every image file under split_dir/<class>/, in a fixed order."""
    return [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((split_dir / name).rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]


def store_size_for(samples: list[tuple[Path, int]], resize_size: int) -> int:
    """The side at which to store a folder's images: `resize_size`, or the native side of small square images.

    CIFAR-like folders (all images the same square size, smaller than resize_size) are kept at
    their own size and upscaled per batch on the device: 32x32 CIFAR stays 48 times smaller than
    storing it at 224. Only the headers of a few dozen files are read.
    """
    sizes = set()
    for path, _ in samples[:: max(1, len(samples) // 64)]:
        try:
            with open_image(path, header_only=True) as image:
                sizes.add(image.size)
        except BadImageError:
            continue
    if len(sizes) == 1:
        (width, height), = sizes
        if width == height and width < resize_size:
            return width
    return resize_size


def decode_folder(samples: list[tuple[Path, int]], channels: int, size: int, workers: int) -> tuple:
    """Decode files in parallel -> (uint8 images (N, C, size, size), labels, unreadable paths)."""
    files = FolderFiles(samples, channels, size)
    loader = torch.utils.data.DataLoader(files, batch_size=256, num_workers=workers, collate_fn=collate_readable, worker_init_fn=ignore_ctrl_c)
    images, labels, bad = [], [], []
    done = 0
    for batch_images, batch_labels, unreadable in loader:
        images.append(batch_images)
        labels.append(batch_labels)
        bad += [str(path) for (path, _), skipped in zip(samples[done : done + len(unreadable)], unreadable.tolist()) if skipped]
        done += len(unreadable)
        if sys.stdout.isatty():
            print(f"\r  decoded {done}/{len(samples)}", end="", flush=True)
    if sys.stdout.isatty():
        print("\r" + " " * 40 + "\r", end="")
    images = [batch for batch in images if len(batch)]
    if not images:
        return torch.zeros(0, channels, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), bad
    return torch.cat(images), torch.cat(labels), bad


def cached_decode(split_dir: Path, samples: list, channels: int, size: int, workers: int, cache_dir: Path) -> tuple:
    """decode_folder, cached on disk: the key covers every file's path, size and modification
    time, so adding, removing or changing a file (or changing the store size) decodes again."""
    listing = [(str(path.relative_to(split_dir)), label, path.stat().st_size, path.stat().st_mtime_ns) for path, label in samples]
    key_source = json.dumps([CACHE_VERSION, str(split_dir.resolve()), channels, size, listing])
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    prefix = f"{split_dir.resolve().parent.name}-{split_dir.name}-{size}px-{channels}ch-"
    path = cache_dir / f"{prefix}{key}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            return cached["images"], cached["labels"], cached["bad"]
        except Exception as error:  # a damaged cache is only a lost shortcut: decode again
            print(f"warning: ignoring the unreadable cache {path} ({error})", file=sys.stderr)
    print(f"Decoding {len(samples)} images from {split_dir} at {size}px (once; cached in {cache_dir}/)")
    images, labels, bad = decode_folder(samples, channels, size, workers)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f"{prefix}*.pt"):  # older versions of this folder
            stale.unlink()
        save_atomically({"images": images, "labels": labels, "bad": bad}, path)
    except OSError as error:  # read-only or full disk: train anyway, without the cache
        print(f"warning: could not write the cache {path} ({error})", file=sys.stderr)
    return images, labels, bad


def save_atomically(obj: dict, path: Path) -> None:
    """torch.save through a temporary file in the same folder, flushed to disk, then renamed over
    `path`: a crash or a full disk mid-write leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def folder_classes(root: Path) -> list[str]:
    """The class names of an ImageNet-layout folder, checked: one clear message per problem."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise SystemExit(f"error: --data {root}: no {split}/ folder; expected {root}/train/<class>/* and {root}/val/<class>/*")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"error: --data {root}: {root}/train has no class folders; expected {root}/train/<class>/<image>")
    extra = sorted(p.name for p in (root / "val").iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise SystemExit(f"error: --data {root}: {root}/val/{extra[0]} is a class that {root}/train does not have; "
                         "train and val need the same class folders")
    return classes


# ----------------------------------------------------------------------------------------------
# Loading every kind of dataset.


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


def augmentation_spec(augment: str, source: str, store_size: int, image_size: int, mean: list, std: list,
                      lighting: float = 0.0, eigen: tuple | None = None) -> dict:
    """What train_transform_batch does to a batch. "auto": pad-and-crop for small stored images
    (CIFAR, MNIST; none for the centred shapes), torchvision's RandomResizedCrop for photos.
    lighting: the std of the PCA lighting noise (the paper: 0.1; 0 = off), along `eigen`
    (eigenvalues, eigenvectors), ImageNet's by default."""
    if augment == "auto":
        augment = "crop" if store_size < image_size else "resized-crop"
    small = store_size < image_size
    eigval, eigvec = eigen or (IMAGENET_EIGVAL, IMAGENET_EIGVEC)
    return {
        "augment": augment,
        "image_size": image_size,
        # pad-and-crop: CIFAR's 4 px of padding on 32 px; photos: the paper's S crops of the R image
        "crop_size": store_size if small else image_size,
        "crop_padding": store_size // 8 if small and source != "shapes" else 0,
        "scale": [0.08, 1.0] if not small else [0.35, 1.0],  # a 0.08 crop of a 32 px image is 9 px
        "ratio": [3 / 4, 4 / 3],
        "flip": source not in ("mnist",),  # a mirrored digit is another glyph (or none)
        "mean": mean,
        "std": std,
        "lighting": lighting,
        "eigval": eigval,
        "eigvec": eigvec,
    }


def load_data(
    source: str,
    *,
    data_dir: str | None,
    data_root: str,
    download: bool,
    image_size: int,
    channels: int | None,
    train_size: int,
    val_size: int,
    augment: str,
    loader: str,
    workers: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    lighting: float = 0.0,
    lighting_pca: str = "imagenet",
    normalization: tuple[list[float], list[float]] | None = None,
    max_bad_files: int = 10,
    rank: int = 0,
    world_size: int = 1,
) -> tuple:
    """Train and validation data for `source` (a DATASETS name or "folder" with data_dir).

    Returns (train, val, classes, preprocess, spec): train and val yield uint8 batches on
    `device` (InMemory or Streaming), this process's share of them; preprocess is the evaluation
    preprocessing stored in checkpoints (see inference.eval_transform); spec is
    train_transform_batch's augmentation. Mean and std are measured on the training images
    unless `normalization` gives them (e.g. ImageNet's, to fine-tune pretrained weights).
    Unreadable image files are skipped with a warning, up to `max_bad_files`; more is an error.
    """
    resize_size = round(image_size * 256 / 224)  # ImageNet convention: resize to 256, crop 224
    stream = False
    if source == "folder":
        root = Path(data_dir)
        classes = folder_classes(root)
        train_samples, val_samples = folder_samples(root / "train", classes), folder_samples(root / "val", classes)
        for split, samples in (("train", train_samples), ("val", val_samples)):
            if not samples:
                raise SystemExit(f"error: --data {root}: no image files under {root}/{split}/<class>/ "
                                 f"(extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
        empty = [name for label, name in enumerate(classes) if not any(lab == label for _, lab in train_samples)]
        if empty:
            raise SystemExit(f"error: --data {root}: {root}/train/{empty[0]} has no images; add some or remove the folder")
        missing = [name for label, name in enumerate(classes) if not any(lab == label for _, lab in val_samples)]
        if missing:
            print(f"warning: {root}/val has no images of class {', '.join(missing)}", file=sys.stderr)
        channels = channels or 3
        store_size = store_size_for(train_samples, resize_size)
        stored_bytes = (len(train_samples) + len(val_samples)) * channels * store_size**2
        stream = loader == "stream" or (loader == "auto" and stored_bytes > MEMORY_LIMIT_BYTES)
        if stream:
            train_files = FolderFiles(train_samples, channels, store_size, fill=True)
            mean, std = channel_stats(train_files_sample(train_files))
        else:
            cache_dir = Path(data_root) / "cache"
            train_images, train_labels, bad = cached_decode(root / "train", train_samples, channels, store_size, workers, cache_dir)
            val_images, val_labels, bad_val = cached_decode(root / "val", val_samples, channels, store_size, workers, cache_dir)
            bad += bad_val
            check_bad_files(bad, max_bad_files)
            if bad:
                print(f"warning: skipped {len(bad)} unreadable image file(s) (allowed: --max-bad-files {max_bad_files}): "
                      f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}", file=sys.stderr)
    elif source == "shapes":
        train_images, train_labels = make_shapes(train_size, image_size, seed=seed)
        val_images, val_labels = make_shapes(val_size, image_size, seed=seed + 1_000_003)
        classes = list(SHAPE_CLASSES)
    else:
        train_images, train_labels, val_images, val_labels, classes = load_torchvision(source, data_root, download)

    if not stream:
        if channels and channels != train_images.shape[1]:  # e.g. --in-channels 3 for MNIST or 1 for CIFAR
            convert = (lambda x: x.expand(-1, 3, -1, -1)) if channels == 3 else TF.rgb_to_grayscale
            train_images, val_images = convert(train_images).contiguous(), convert(val_images).contiguous()
        channels, store_size = train_images.shape[1], train_images.shape[-1]
        mean, std = channel_stats(train_images)

    mean, std = normalization or (mean, std)
    eigen = None
    if lighting and channels != 3:
        raise SystemExit(f"error: --lighting needs colour images; this data has {channels} channel(s)")
    if lighting and lighting_pca == "data":
        eigen = pca_lighting_stats(train_files_sample(train_files) if stream else train_images)

    # Evaluation: small images are upscaled whole; photos are resized to R and centre-cropped.
    preprocess = {"image_size": image_size, "resize_size": image_size if store_size < resize_size else resize_size,
                  "mean": mean, "std": std, "in_channels": channels}
    spec = augmentation_spec(augment, source, store_size, image_size, mean, std, lighting, eigen)
    shard = {"rank": rank, "world_size": world_size}
    if stream:
        bad_files = set()
        train = Streaming(train_files, batch_size, True, workers, device, **shard, max_bad_files=max_bad_files, bad_files=bad_files)
        val = Streaming(FolderFiles(val_samples, channels, store_size), batch_size, False, workers, device, **shard,
                        max_bad_files=max_bad_files, bad_files=bad_files)
    else:
        train = InMemory(train_images, train_labels, batch_size, True, device, **shard)
        val = InMemory(val_images, val_labels, batch_size, False, device, **shard)
    return train, val, classes, preprocess, spec


def train_files_sample(files: FolderFiles, count: int = 500) -> torch.Tensor:
    """A seeded sample of decoded training images (N, C, R, R), for statistics of streamed folders."""
    picks = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:count].tolist()
    return torch.stack([image for image in (files[i][0] for i in picks) if image is not None])
