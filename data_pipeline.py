"""Datasets as batches of uint8 images on the training device, shared by train.py and bench.py.

Every dataset becomes batches of uint8 images of one stored size (N, C, R, R) on the training
device; augmentation and normalisation then run on the whole batch at once (presets.py), on the
GPU when there is one. Three kinds of `BatchSource` give those batches, alike to train.py:

- In memory (datasets that fit: MNIST, CIFAR, the built-in shapes, small image folders): the
  images are decoded once into one uint8 tensor (folders: cached under data/cache/, see
  folders.py) and kept on the device. No PIL, no worker processes while training.
- Packed (`--loader packed`, and automatically once a folder has been packed): every image is
  decoded once into a packed copy on disk (packs.py); background threads then read each batch
  from it, a read instead of a decode, into pinned memory for an asynchronous transfer.
- Streaming (large image folders such as ImageNet, not packed): DataLoader workers decode each
  file with reduced-size JPEG decoding, resize its shorter side to R and cut the central R x R
  square, all in uint8; pinned memory and prefetching hide the transfer.

R is the paper's 256 for 224-pixel crops ("we down-sampled the images to a fixed resolution of
256 x 256"), or the native size of small images such as CIFAR's 32 x 32, which are upscaled per
batch on the device instead.

    >>> data = load_data(DataConfig(dataset="shapes", train_size=1000), torch.device("cpu"))
    >>> images, labels = next(data.train.batches(seed=0))     # uint8 (64, 3, 67, 67), int64 (64,)
"""

import math
import os
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from display_text import printable
from errors import DataError
from folders import (
    FolderFiles,
    cached_decode,
    check_bad_files,
    check_listed_files,
    check_samples,
    collate_readable,
    ignore_ctrl_c,
    report_left_out,
    store_size_for,
    train_files_sample,
)
from imagenet import Listing, list_class_folders, list_imagenet
from packs import PACK_FORMATS, PackedFiles, build_pack, decode_jpeg_batch, pack_path
from presets import EvalPreset, TrainPreset, channel_stats, pca_lighting_stats, train_preset
from shapes import CLASSES as SHAPE_CLASSES
from shapes import make_shapes
from worker_deaths import worker_batches

DATASETS = ("shapes", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet")
# Default input size per dataset. Small images are upscaled so that AlexNet's stride-4 conv1 and
# three max-pools have something to work on; 67 is the smallest size the network accepts and keeps
# CPU training fast. GPU users may prefer --image-size 227 (the paper's arithmetic) for CIFAR.
DEFAULT_IMAGE_SIZE = {"shapes": 67, "mnist": 67, "fashion-mnist": 67, "cifar10": 67, "cifar100": 67, "folder": 224,
                      "imagenet": 224}  # fmt: skip
LOADERS = ("auto", "memory", "stream", "packed")
MEMORY_LIMIT_BYTES = 8 * 2**30  # image folders up to this size (as uint8) are held in memory


def default_workers() -> int:
    """Decoding processes and pack-reading threads: one per core, up to 8."""
    return min(8, usable_cpus())


def usable_cpus() -> int:
    """The CPUs this process may run on (taskset, a container's or a batch job's cpuset), else the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # (macOS and Windows have no sched_getaffinity)
        return os.cpu_count() or 1


@dataclass
class DataConfig:
    """What to load and how. The defaults of train.py's data flags are these; the fields are named as the flags."""

    dataset: str = "shapes"  # one of DATASETS; ignored when `data` is given
    data: str | None = None  # an image folder DIR/train/<class>/*, DIR/val/<class>/*
    data_root: str = "data"  # where torchvision datasets, ImageNet (any layout, see imagenet.py) and caches live
    download: bool = False  # fetch a missing torchvision dataset (needs network)
    image_size: int | None = None  # the model's input side; None: DEFAULT_IMAGE_SIZE of the dataset (set on creation)
    in_channels: int | None = None  # 1 or 3; None: the dataset's own
    train_size: int = 10000  # built-in shapes: number of training images
    val_size: int = 2000  # built-in shapes: number of validation images
    augment: str = "auto"  # one of presets.AUGMENTATIONS
    lighting: float = 0.0  # std of the paper's PCA lighting noise (0 = off)
    lighting_pca: str = "imagenet"  # its principal components: "imagenet" or "data"
    normalization: tuple[list[float], list[float]] | None = None  # (mean, std); None: measured on the data
    loader: str = "auto"  # image folders: one of LOADERS
    pack_dir: str | None = None  # where packed copies live (packs.py); None: <data_root>/packs
    cache_dir: str | None = None  # where the decode cache lives; None: <data_root>/cache, or data/cache if read-only
    pack_format: str = "raw"  # one of packs.PACK_FORMATS: raw uint8 (fastest to read) or JPEG (a tenth of the disk)
    workers: int = field(default_factory=default_workers)  # image folders: decoding processes, pack-reading threads
    # PAPER: batch 128 there (train.py --recipe paper). 64 takes twice the steps for the same images,
    # which is what gets the built-in data past 95% in under 5 minutes on 2 CPU cores.
    batch_size: int = 64  # images per batch per process
    seed: int = 0  # the built-in shapes' generation
    max_bad_files: int = 10  # unreadable image files to skip before refusing a folder
    verify_pack: bool = False  # read every image file again, to check a pack's or the decode cache's contents

    def __post_init__(self) -> None:
        if self.image_size is None:  # the one place the default input size is worked out
            self.image_size = DEFAULT_IMAGE_SIZE[self.source]

    @classmethod
    def from_settings(cls, settings: Mapping, **overrides) -> "DataConfig":
        """The fields found by name in `settings` (e.g. vars() of parsed flags), then `overrides`."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in settings.items() if k in names}, **overrides})

    @property
    def source(self) -> str:
        return "folder" if self.data else self.dataset

    @property
    def resize_size(self) -> int:
        """The side photos are resized to before the crop: ImageNet's convention, 256 for a 224 crop."""
        return round(self.image_size * 256 / 224)


@dataclass
class Data:
    """What load_data returns: batches for this process, and what the model needs to know."""

    train: "BatchSource"  # InMemory, Streaming or Packed
    val: "BatchSource"
    classes: list[str]
    preprocess: EvalPreset  # evaluation preprocessing, stored in checkpoints
    augment: TrainPreset  # what train_transform does to a training batch
    class_names: list[str] | None = None  # names people read, where `classes` are ids (ImageNet's WordNet ids)


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


def count_batches(n: int, batch_size: int, train: bool, rank: int, world_size: int) -> int:
    """Batches per epoch for this process (shard_order's, cut into batch_size pieces)."""
    return math.ceil(len(shard_order(n, batch_size, train, 0, rank, world_size)) / batch_size)


class BatchSource:
    """What the three kinds of batches share: this process's share of a split of N images, served as
    uint8 (B, C, R, R) batches with their labels on the device, batch_size at a time.

    `kind` names it in log lines; `random_access` says whether `take` gives images without
    decoding files (in memory and packed: yes; streamed: no).
    """

    kind = ""
    random_access = False

    def __init__(self, batch_size: int, train: bool, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size, self.train, self.device = batch_size, train, device
        self.rank, self.world_size = rank, world_size  # this process's share, under torchrun

    def __len__(self) -> int:
        raise NotImplementedError

    def num_batches(self) -> int:
        return count_batches(len(self), self.batch_size, self.train, self.rank, self.world_size)

    def order(self, seed: int, start: int) -> torch.Tensor:
        """The indices this process reads, from batch `start` on (see shard_order)."""
        order = shard_order(len(self), self.batch_size, self.train, seed, self.rank, self.world_size)
        return order[start * self.batch_size :]

    def take(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Some images and their labels, on the device (for pictures and samples), where `random_access`."""
        raise NotImplementedError(f"{type(self).__name__} has no random access")

    def batches(self, seed: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) batches on the device from batch `start` on, shuffled by `seed` when training."""
        raise NotImplementedError


class InMemory(BatchSource):
    """A labelled uint8 image tensor (N, C, R, R) on the device, served in batches."""

    kind = "in memory"
    random_access = True

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        train: bool,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, train, device, rank, world_size)
        self.images, self.labels = images.to(device), labels.to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(indices, device=self.labels.device)
        return self.images[index], self.labels[index]

    def batches(self, seed: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(seed, start).to(self.labels.device)
        for i in range(0, len(order), self.batch_size):
            index = order[i : i + self.batch_size]
            yield self.images[index], self.labels[index]


class Streaming(BatchSource):
    """An image folder decoded by DataLoader workers, served as uint8 (N, C, R, R) batches on the device."""

    kind = "streamed"

    def __init__(
        self,
        files: FolderFiles,
        batch_size: int,
        train: bool,
        workers: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        max_bad_files: int = 10,
        bad_files: set[str] | None = None,
    ) -> None:
        super().__init__(batch_size, train, device, rank, world_size)
        self.files = files
        # Unreadable files are found as they are read: counted (in a set that train and val share)
        # against the same limit as folders decoded into memory.
        self.max_bad_files, self.bad_files = max_bad_files, set() if bad_files is None else bad_files
        self.sampler = []  # refilled in place every epoch, read by the persistent loader
        self.loader = torch.utils.data.DataLoader(
            files,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_readable,
            worker_init_fn=ignore_ctrl_c,
            pin_memory=device.type == "cuda",  # page-locked buffers: asynchronous host-to-GPU copies
            persistent_workers=workers > 0,  # no worker start-up cost every epoch
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),  # its worker seeds: not drawn from the global generator
        )

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, seed: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(seed, start).tolist()
        self.sampler[:] = order
        for i, (images, labels, unreadable) in enumerate(worker_batches(self.loader)):  # a dead worker: WorkerDiedError
            if unreadable.any():
                batch = order[i * self.batch_size : (i + 1) * self.batch_size]
                self.bad_files.update(
                    str(self.files.samples[j][0]) for j, bad in zip(batch, unreadable.tolist()) if bad
                )
                check_bad_files(self.bad_files, self.max_bad_files)
            if len(labels):  # not a batch of unreadable files only
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class Packed(BatchSource):
    """A packed image folder (packs.py) gathered by background threads, as uint8 (N, C, R, R) batches on the device:
    the same batches as InMemory's for the same images."""

    kind = "packed"
    random_access = True

    def __init__(
        self,
        files: PackedFiles,
        batch_size: int,
        train: bool,
        workers: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        decode_on_device: bool | None = None,
    ) -> None:
        super().__init__(batch_size, train, device, rank, world_size)
        self.files, self.workers = files, workers
        # A JPEG pack on CUDA: the threads only read the files' bytes, nvJPEG decodes each batch on the GPU.
        on_gpu = device.type == "cuda" and files.format == "jpeg"
        self.decode_on_device = on_gpu if decode_on_device is None else decode_on_device
        self.decoder = "nvJPEG on the GPU" if self.decode_on_device and on_gpu else "Pillow in the reading threads"
        if self.decode_on_device and device.type != "cuda":
            self.decoder = "torchvision on the CPU"

    def __len__(self) -> int:
        return len(self.files)

    def take(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.on_device(self.read(torch.tensor(indices)))

    def read(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at `indices`, decoded, and their labels; run by the reading threads. A JPEG pack on CUDA
        is decoded here by nvJPEG, a batch in one call, rather than in the training loop's thread: on an H200
        that trained from the pack at 9,700 img/s against 8,803 (docs/gpu.md)."""
        if self.decode_on_device:
            blobs, labels = self.files.gather_encoded(indices)
            return decode_jpeg_batch(blobs, self.files.shape[-1], self.device), labels
        return self.files.gather(indices, self.device.type == "cuda")  # pinned: asynchronous copies to the GPU

    def batches(self, seed: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`workers` threads read up to twice as many batches ahead (none: each batch is read when it is
        asked for)."""
        pieces = iter(self.order(seed, start).split(self.batch_size))
        with ThreadPoolExecutor(max(self.workers, 1)) as pool:
            ahead = deque(pool.submit(self.read, piece) for piece in islice(pieces, 2 * self.workers))
            for piece in pieces:  # one batch in, one out
                ahead.append(pool.submit(self.read, piece))
                yield self.on_device(ahead.popleft().result())
            while ahead:
                yield self.on_device(ahead.popleft().result())

    def on_device(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


# ----------------------------------------------------------------------------------------------
# Loading every kind of dataset.


def load_data(config: DataConfig, device: torch.device, rank: int = 0, world_size: int = 1) -> Data:
    """Train and validation data for `config`: this process's share of them, as uint8 batches on
    `device`, with the evaluation and training presets. Mean and std are measured on the training
    images unless `config.normalization` gives them (e.g. ImageNet's, to fine-tune pretrained
    weights). Unreadable image files are skipped with a warning, up to `config.max_bad_files`.
    Raises DataError (one line, naming the setting at fault) for data that cannot be used.
    """
    shard = {"rank": rank, "world_size": world_size}
    if config.source in ("folder", "imagenet"):
        listing = list_dataset(config)
        channels = config.in_channels or 3
        store_size = store_size_for(listing.train, config.resize_size)
        loader, pack_format = pick_loader(config, listing, channels, store_size, device)
        if loader == "packed":
            return load_packed(config, listing, channels, store_size, device, shard, pack_format)
        if loader == "stream":
            return load_streamed(config, listing, channels, store_size, device, shard)
        train_images, train_labels, val_images, val_labels = decode_folder_splits(listing, config, channels, store_size)
        classes, names = listing.classes, listing.names
    elif config.source == "shapes":
        train_images, train_labels = make_shapes(config.train_size, config.image_size, seed=config.seed)
        val_images, val_labels = make_shapes(config.val_size, config.image_size, seed=config.seed + 1_000_003)
        classes, names = list(SHAPE_CLASSES), None
    else:
        train_images, train_labels, val_images, val_labels, classes = load_torchvision(config)
        names = None

    if config.in_channels and config.in_channels != train_images.shape[1]:  # e.g. 3 for MNIST or 1 for CIFAR
        convert = (lambda x: x.expand(-1, 3, -1, -1)) if config.in_channels == 3 else TF.rgb_to_grayscale
        train_images, val_images = convert(train_images).contiguous(), convert(val_images).contiguous()
    preprocess, augment = make_presets(config, train_images)
    train = InMemory(train_images, train_labels, config.batch_size, True, device, **shard)
    val = InMemory(val_images, val_labels, config.batch_size, False, device, **shard)
    return Data(train, val, classes, preprocess, augment, names)


def list_dataset(config: DataConfig) -> Listing:
    """The image files of an image folder (config.data) or of ImageNet in any of its layouts
    (config.data_root), checked, with what was left out reported."""
    if config.source == "imagenet":
        listing = list_imagenet(Path(config.data_root), "data_root")
    else:
        listing = list_class_folders(Path(config.data), "data")
    report_left_out(listing.hidden, listing.other, listing.image_named)
    setting = "data_root" if config.source == "imagenet" else "data"
    check_samples(listing.train_dir.parent, listing.classes, listing.train, listing.val, setting)
    check_listed_files(listing.train + listing.val, config.max_bad_files)  # thousands of empty files: before decoding
    return listing


def pick_loader(
    config: DataConfig, listing: Listing, channels: int, store_size: int, device: torch.device | None = None
) -> tuple[str, str]:
    """(loader, pack format) for an image folder, "auto" made concrete: its pack where the folder has
    been packed (even partly, or from files changed since: it is then completed or packed again;
    config.pack_format first, else the other format), in memory where it fits in
    MEMORY_LIMIT_BYTES; on CUDA, a JPEG pack decoded on the GPU where a raw pack would not fit in
    this machine's memory (an epoch would read it from the disk); else streamed."""
    if config.loader != "auto":
        return config.loader, config.pack_format
    splits = ((listing.train_dir, listing.train), (listing.val_dir, listing.val))
    for fmt in sorted(PACK_FORMATS, key=lambda fmt: fmt != config.pack_format):
        if all(pack_path(packs_dir(config), folder, channels, store_size, fmt).is_dir() for folder, _ in splits):
            return "packed", fmt
    images = len(listing.train) + len(listing.val)
    stored = images * channels * store_size**2
    if stored <= MEMORY_LIMIT_BYTES:
        return "memory", config.pack_format
    memory = host_memory_bytes()
    if device is not None and device.type == "cuda" and memory is not None and stored > memory:
        print(f"note: a raw pack of these {images} images would take {stored / 1e9:.0f} GB, more than this machine's "
              f"{memory / 1e9:.0f} GB of memory: packing them as JPEG in {packs_dir(config)}/ (about a tenth of that), "
              "decoded on the GPU (nvJPEG); --loader and --pack-format choose otherwise")  # fmt: skip
        return "packed", "jpeg"
    print(f"note: streaming {images} images, decoding each one every epoch; "
          f"--loader packed decodes them once into a packed copy ({stored / 1e9:.0f} GB in {packs_dir(config)}/, "
          "see --pack-dir and --pack-format) for faster epochs")  # fmt: skip
    return "stream", config.pack_format


def host_memory_bytes() -> int | None:
    """This machine's memory (what the page cache can hold at most); None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def packs_dir(config: DataConfig) -> Path:
    """pack_dir, or <data_root>/packs, or data/packs where data_root cannot be written (see writable_under)."""
    return Path(config.pack_dir) if config.pack_dir else writable_under(Path(config.data_root), "packs")


def load_packed(
    config: DataConfig, listing: Listing, channels: int, store_size: int, device: torch.device, shard: dict, fmt: str,
) -> Data:  # fmt: skip
    """Both splits from their packs in format `fmt`, packed first where needed (see packs.build_pack)."""
    files, bad, folder = [], [], packs_dir(config)
    if not config.pack_dir and folder != Path(config.data_root) / "packs":
        print(f"note: {printable(str(config.data_root))} cannot be written (read-only data?): the packs go to "
              f"{printable(str(folder))}/ "
              "instead (--pack-dir chooses another)")  # fmt: skip
    for split_dir, samples in ((listing.train_dir, listing.train), (listing.val_dir, listing.val)):
        path, meta = build_pack(
            folder, split_dir, samples, channels, store_size, config.workers, fmt, config.verify_pack
        )
        files.append(PackedFiles(path, meta))
        bad += meta["bad"]
    report_bad_files(bad, config.max_bad_files)
    train_files, val_files = files
    picks = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(0))[:500].sort().values
    preprocess, augment = make_presets(config, train_files.gather(picks)[0])  # statistics of a sample
    loading = {"workers": config.workers, "device": device, **shard}
    train = Packed(train_files, config.batch_size, True, **loading)
    val = Packed(val_files, config.batch_size, False, **loading)
    return Data(train, val, listing.classes, preprocess, augment, listing.names)


def load_streamed(
    config: DataConfig, listing: Listing, channels: int, store_size: int, device: torch.device, shard: dict,
) -> Data:  # fmt: skip
    """Both splits decoded file by file as they are read (see Streaming)."""
    train_files = FolderFiles(listing.train, channels, store_size, fill=True)
    preprocess, augment = make_presets(config, train_files_sample(train_files))
    streams = {
        "workers": config.workers,
        "device": device,
        **shard,
        "max_bad_files": config.max_bad_files,
        "bad_files": set(),
    }  # unreadable files of both splits count against one limit
    train = Streaming(train_files, config.batch_size, True, **streams)
    val = Streaming(FolderFiles(listing.val, channels, store_size), config.batch_size, False, **streams)
    return Data(train, val, listing.classes, preprocess, augment, listing.names)


def stored_bytes(config: DataConfig) -> int:
    """What the uint8 images of `config` take in memory, before anything is loaded. Image folders:
    0 (their size is known once listed; large ones are streamed)."""
    size = config.image_size
    if config.source == "shapes":
        return (config.train_size + config.val_size) * 3 * size**2
    native = {"mnist": 70_000 * 28 * 28, "fashion-mnist": 70_000 * 28 * 28, "cifar10": 60_000 * 3 * 32 * 32,
              "cifar100": 60_000 * 3 * 32 * 32}  # fmt: skip
    return native.get(config.source, 0)


def decode_folder_splits(
    listing: Listing, config: DataConfig, channels: int, store_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both splits of an image folder decoded (or read from the decode cache), unreadable files
    counted against config.max_bad_files -> train images, labels, val images, labels."""
    cache_dir = Path(config.cache_dir) if config.cache_dir else decode_cache_dir(Path(config.data_root))
    decode = {
        "channels": channels,
        "size": store_size,
        "workers": config.workers,
        "cache_dir": cache_dir,
        "verify": config.verify_pack,
    }
    train_images, train_labels, bad = cached_decode(listing.train_dir, listing.train, **decode)
    val_images, val_labels, bad_val = cached_decode(listing.val_dir, listing.val, **decode)
    report_bad_files(bad + bad_val, config.max_bad_files)
    return train_images, train_labels, val_images, val_labels


FALLBACK_DATA_ROOT = Path("data")  # the default data root, under the working directory


def writable_under(data_root: Path, name: str) -> Path:
    """<data_root>/<name>, or data/<name> where data_root cannot be written: ImageNet on read-only shared
    storage would otherwise be decoded again by every run, or could not be packed at all."""
    default, fallback = data_root / name, FALLBACK_DATA_ROOT / name
    nearest = next((path for path in (default, *default.parents) if path.exists()), Path("."))
    if os.access(nearest, os.W_OK | os.X_OK) or default.resolve() == fallback.resolve():
        return default
    return fallback


def decode_cache_dir(data_root: Path) -> Path:
    """<data_root>/cache, or data/cache (with a note) where data_root cannot be written."""
    cache = writable_under(data_root, "cache")
    if cache != data_root / "cache":
        print(f"note: {printable(str(data_root))} cannot be written (read-only data?): the decode cache goes to "
              f"{printable(str(cache))}/ instead "
              "(train.py --cache-dir chooses another)")  # fmt: skip
    return cache


def report_bad_files(bad: list[str], max_bad_files: int) -> None:
    """DataError for more unreadable files than allowed; else one warning line naming the first few."""
    check_bad_files(bad, max_bad_files)
    if bad:
        print(
            f"warning: skipped {len(bad)} unreadable image file(s) (allowed: {max_bad_files}): "
            f"{', '.join(map(printable, bad[:5]))}{' ...' if len(bad) > 5 else ''}",
            file=sys.stderr,
        )


def make_presets(config: DataConfig, train_images: torch.Tensor) -> tuple[EvalPreset, TrainPreset]:
    """The evaluation and training presets for uint8 training images (N, C, R, R), or a sample of them."""
    channels, store_size, image_size = train_images.shape[1], train_images.shape[-1], config.image_size
    mean, std = config.normalization or channel_stats(train_images)
    if config.lighting and channels != 3:
        raise DataError(f"PCA lighting needs colour images; this data has {channels} channel(s)", "lighting")
    eigen = pca_lighting_stats(train_images) if config.lighting and config.lighting_pca == "data" else None
    resize_size = config.resize_size
    small = store_size < resize_size
    # Evaluation: small images are upscaled whole; photos are resized to R and centre-cropped.
    preprocess = EvalPreset(image_size, image_size if small else resize_size, mean, std, channels)
    # The shapes are drawn whole inside their images, and the 10,000 of them are all different: a
    # crop would cut shapes off (training top-1 then stays below validation's), so "auto" only flips.
    augment = "none" if config.augment == "auto" and config.source == "shapes" else config.augment
    augment = train_preset(
        augment,
        small=store_size < image_size,
        # pad-and-crop: CIFAR's 4 px of padding on 32 px; none for the centred shapes
        crop_padding=store_size // 8 if config.source != "shapes" else 0,
        flip=config.source != "mnist",  # a mirrored digit is another glyph (or none)
        store_size=store_size,
        image_size=image_size,
        mean=mean,
        std=std,
        lighting=config.lighting,
        eigen=eigen,
    )
    return preprocess, augment


def load_torchvision(config: DataConfig) -> tuple:
    """(train images, train labels, val images, val labels, classes) as uint8 NCHW / int64 tensors."""
    import torchvision.datasets as datasets  # only needed for these datasets

    name, root = config.dataset, config.data_root
    classes = {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
    }
    try:
        train = classes[name](root, train=True, download=config.download)
        val = classes[name](root, train=False, download=config.download)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        folder = {
            "mnist": "MNIST/raw",
            "fashion-mnist": "FashionMNIST/raw",
            "cifar10": "cifar-10-batches-py",
            "cifar100": "cifar-100-python",
        }[name]
        raise DataError(f"not found in {Path(root) / folder} ({error})", "dataset") from None
    except OSError as error:  # e.g. no network while downloading
        raise DataError(f"download into {root} failed ({error}); copy the files there by hand", "dataset") from None
    return (*dataset_tensors(train), *dataset_tensors(val), list(train.classes))


def dataset_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision dataset's arrays -> uint8 images (N, C, H, W) and int64 labels."""
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # -> (N, C, H, W)
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)
