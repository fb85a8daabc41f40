"""Preprocessing, side by side: what training does to a batch, and what evaluation does to an image.

Both start from uint8 images (C, H, W) stored at a side R (the paper's 256, or the native side
of small images such as CIFAR's 32) and end as normalised float32 inputs of side S.

- Training (`TrainPreset`, `train_transform`): a random crop (the paper's 224 crops of 256, pad-and-
  crop for small images, or torchvision's RandomResizedCrop), a horizontal flip, a resize to S,
  normalisation and the paper's PCA lighting noise, on a whole batch at once, on its device.
- Evaluation (`EvalPreset`, `eval_transform`): the central square resized to `resize_size` and its
  central S x S crop, normalised; `tta_transform` gives several views of each image instead: the
  crop and its mirror ("flip"), or the paper's ten crops ("10crop", `ten_crop_transform`).
  Checkpoints store the EvalPreset (as a dict), so inference preprocesses as validation did.

To add an augmentation: a field in TrainPreset, set in `train_preset`, applied in `train_transform`
(and a flag in train.py).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from display_text import shown

AUGMENTATIONS = ("auto", "crop", "resized-crop", "none")
# Test-time augmentation: how many views of each image are classified (their softmax averaged).
TTA_VIEWS = {"none": 1, "flip": 2, "10crop": 10}
TTA_MODES = tuple(TTA_VIEWS)

# The paper's "fancy PCA" colour augmentation: the principal components of ImageNet's RGB pixel
# values (pixels in [0, 1]), eigenvalues in decreasing order; column j of the eigenvector matrix
# belongs to eigenvalue j (some reimplementations pair them in reverse order).
IMAGENET_EIGVAL = [0.2175, 0.0188, 0.0045]
IMAGENET_EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class EvalPreset:
    """The evaluation preprocessing of a model; checkpoints keep it as a dict ("preprocess")."""

    image_size: int  # S: the model's input side
    resize_size: int  # the central square is resized to this side before the central S crop
    mean: list[float]  # per channel, in [0, 1] units
    std: list[float]
    in_channels: int  # 1 (grayscale) or 3 (RGB): what images are converted to


# Bounds of an EvalPreset read from a file (a checkpoint, an export), checked before any image is resized by it:
# a damaged or hostile file must not make every image a 10.8 GB resize (resize_size 60000) or blow its pixels up
# (a std of 0). MAX_SIDE is 16 times the paper's 256: beyond any AlexNet that train.py's memory check lets train,
# yet a side whose resize costs 50 MB of uint8 and whose crop 200 MB of float32 per image.
MAX_SIDE = 4096
MIN_STD = 1 / 256  # below one grey level: channel_stats never measures less (it clamps at 1/255)
CHANNELS = {1: "grayscale", 3: "RGB"}


def preset_problem(values: object, min_image_size: int) -> str | None:
    """What makes no sense in an evaluation preset read from a file (EvalPreset's fields, as a dict), as one
    line "preprocess.FIELD = VALUE: what is wrong"; None when it is usable by a network whose smallest input
    side is `min_image_size`. The one check of checkpoints.py and export.py."""
    if not isinstance(values, dict):
        return f"preprocess = {shown(values)}: not a table of {', '.join(EVAL_FIELDS)}"
    missing = [field for field in EVAL_FIELDS if field not in values]
    if missing:
        return f"preprocess lacks {', '.join(missing)}"
    channels, image_size, resize_size = values["in_channels"], values["image_size"], values["resize_size"]
    problems = {
        "in_channels": None if whole(channels) and channels in CHANNELS else "neither 1 (grayscale) nor 3 (RGB)",
        "image_size": side_problem(image_size, min_image_size, f"{min_image_size} (the network's smallest input)"),
        "resize_size": side_problem(
            resize_size,
            image_size if whole(image_size) else 1,
            f"preprocess.image_size ({shown(image_size)}), the side of the centre crop cut from it",
        ),
        "mean": numbers_problem(values["mean"], channels, 0, 1),
        "std": numbers_problem(values["std"], channels, MIN_STD, 1),
    }
    for field, problem in problems.items():
        if problem:
            return f"preprocess.{field} = {shown(values[field])}: {problem}"
    return None


EVAL_FIELDS = ("image_size", "resize_size", "mean", "std", "in_channels")


def whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no size


def side_problem(side: object, smallest: int, smallest_is: str) -> str | None:
    if not whole(side):
        return "not a whole number"
    if side < smallest:
        return f"less than {smallest_is}"
    if side > MAX_SIDE:
        return f"more than {MAX_SIDE} pixels (each image would be resized to {side} x {side})"
    return None


def numbers_problem(values: object, channels: object, low: float, high: float) -> str | None:
    """Why `values` is not one number within [low, high] per channel (`channels`: preprocess.in_channels)."""
    count = channels if whole(channels) and channels in CHANNELS else 3
    if not isinstance(values, (list, tuple)) or len(values) > 2 * MAX_CHANNELS:
        return f"not a list of {count} numbers"
    for value in values:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{shown(value)} is not a number"
        if not low <= value <= high:  # NaN fails too
            return f"{shown(value)} is not within [{low:.2g}, {high:.2g}]"
    if len(values) != count:
        return f"{len(values)} values for {count} channels (preprocess.in_channels)"
    return None


MAX_CHANNELS = max(CHANNELS)


# The evaluation preprocessing torchvision's ImageNet weights were trained for (their transforms():
# resize 256, centre crop 224, ImageNet's mean and std).
IMAGENET_PRESET = EvalPreset(image_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, in_channels=3)


@dataclass
class TrainPreset:
    """What `train_transform` does to a training batch."""

    kind: str  # "crop" (fixed-size crops, maybe padded), "resized-crop" (RandomResizedCrop) or "none"
    image_size: int  # S: the side of the model input
    crop_size: int  # "crop": the side of the crop, before resizing to S
    crop_padding: int  # "crop": black border added first (CIFAR's 4 px on 32 px)
    scale: tuple[float, float]  # "resized-crop": the range of the crop's area fraction
    ratio: tuple[float, float]  # "resized-crop": the range of its aspect ratio (log-uniform)
    flip: bool  # mirror half of the images
    mean: list[float]
    std: list[float]
    lighting: float  # std of the PCA lighting noise (the paper: 0.1; 0 = off)
    eigval: list[float]  # the principal components it follows: eigenvalues, decreasing
    eigvec: list[list[float]]  # and eigenvectors (columns)


def train_preset(
    augment: str,
    small: bool,
    crop_padding: int,
    flip: bool,
    store_size: int,
    image_size: int,
    mean: list[float],
    std: list[float],
    lighting: float = 0.0,
    eigen: tuple[list[float], list[list[float]]] | None = None,
) -> TrainPreset:
    """The training preset for images stored at `store_size`. "auto": pad-and-crop for small stored
    images (`small`: CIFAR, MNIST), torchvision's RandomResizedCrop for photos. On photos, "crop" is
    the paper's random S x S crops of the R x R image."""
    if augment == "auto":
        augment = "crop" if small else "resized-crop"
    eigval, eigvec = eigen or (IMAGENET_EIGVAL, IMAGENET_EIGVEC)
    return TrainPreset(
        kind=augment,
        image_size=image_size,
        crop_size=store_size if small else image_size,
        crop_padding=crop_padding if small else 0,
        scale=(0.08, 1.0) if not small else (0.35, 1.0),  # a 0.08 crop of a 32 px image is 9 px
        ratio=(3 / 4, 4 / 3),
        flip=flip,
        mean=mean,
        std=std,
        lighting=lighting,
        eigval=eigval,
        eigvec=eigvec,
    )


# ----------------------------------------------------------------------------------------------
# Training: batched augmentation on the device. The random numbers (a crop box and a flip per
# image) come from a generator on the CPU: the host never waits for the device to hand them over.


def train_transform(
    images: torch.Tensor,
    preset: TrainPreset,
    generator: torch.Generator,
    memory_format: torch.memory_format = torch.contiguous_format,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Augment a uint8 batch (N, C, H, W) on its device: crop, flip, resize to (S, S), normalise,
    PCA lighting noise -> float32 (N, C, S, S).

    With several processes the random numbers are drawn for the whole global batch (N x
    world_size) on every process, which keeps its own slice: an image gets the same crop whether
    one process trains on it or several.
    """
    n, _, height, width = images.shape
    mine = slice(rank * n, (rank + 1) * n)
    boxes = crop_boxes(n * world_size, height, width, preset, generator)[mine]
    if preset.flip:
        flips = (torch.rand(n * world_size, generator=generator) < 0.5)[mine]
    else:
        flips = torch.zeros(n, dtype=torch.bool)
    pad = preset.crop_padding if preset.kind == "crop" else 0
    if images.device.type == "cpu":
        x = crops_on_cpu(images, boxes, flips, preset.image_size, pad)
    else:
        x = crops_by_grid(images, boxes, flips, preset.image_size, "zeros" if pad else "border")
    x = normalize(x.contiguous(memory_format=memory_format), preset.mean, preset.std)
    if preset.lighting:
        alpha = preset.lighting * torch.randn(n * world_size, 3, generator=generator)[mine]
        shift = lighting_shift(alpha, preset.eigval, preset.eigvec) / torch.tensor(preset.std)  # in normalised units
        x += shift.to(x.device, non_blocking=True)[:, :, None, None]
    return x


def crop_boxes(n: int, height: int, width: int, preset: TrainPreset, generator: torch.Generator) -> torch.Tensor:
    """Random crop boxes (n, 4) as whole-pixel (left, top, width, height), following `preset`.

    "crop": a crop_size square in the image padded by crop_padding (CIFAR's pad-4-and-crop; with
    padding 0, the paper's random 224 crops of the 256 image). "resized-crop": torchvision's
    RandomResizedCrop: area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`;
    a box that would not fit is shrunk to fit instead of drawn again. "none": the whole image.
    """
    if preset.kind == "crop":
        size, pad = preset.crop_size, preset.crop_padding
        left = torch.randint(-pad, width - size + pad + 1, (n,), generator=generator)
        top = torch.randint(-pad, height - size + pad + 1, (n,), generator=generator)
        return torch.stack([left, top, torch.full((n,), size), torch.full((n,), size)], dim=1)
    if preset.kind == "resized-crop":
        low, high = preset.scale
        area = height * width * (low + (high - low) * torch.rand(n, generator=generator))
        log_low, log_high = math.log(preset.ratio[0]), math.log(preset.ratio[1])
        ratio = torch.exp(log_low + (log_high - log_low) * torch.rand(n, generator=generator))
        w = torch.sqrt(area * ratio).round().clamp(1, width).long()
        h = torch.sqrt(area / ratio).round().clamp(1, height).long()
        left = (torch.rand(n, generator=generator) * (width - w + 1)).long()
        top = (torch.rand(n, generator=generator) * (height - h + 1)).long()
        return torch.stack([left, top, w, h], dim=1)
    return torch.tensor([[0, 0, width, height]]).expand(n, 4)


def crops_by_grid(
    images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int, padding_mode: str
) -> torch.Tensor:
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
    # A negative x scale mirrors the box.
    sign = 1.0 - 2.0 * flips.to(images.device, torch.float32, non_blocking=True)
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
    for i, ((left, top, w, h), flip) in enumerate(
        zip((boxes + torch.tensor([pad, pad, 0, 0])).tolist(), flips.tolist())
    ):
        crop = images[i, :, top : top + h, left : left + w]  # a view: no copy yet
        crops.append(crop.flip(-1) if flip else crop)
    n, channels = images.shape[:2]
    # The batch is written once, straight into channels_last: the layout the network wants.
    out = torch.empty(n, size, size, channels, dtype=images.dtype).permute(0, 3, 1, 2)  # (N, S, S, C) -> (N, C, S, S)
    if len({crop.shape for crop in crops}) == 1:  # one crop size: resize the whole batch at once
        x = torch.stack(crops)
        out.copy_(TF.resize(x, [size, size], antialias=True) if x.shape[-1] != size or x.shape[-2] != size else x)
        return out
    for i, crop in enumerate(crops):
        out[i] = TF.resize(crop, [size, size], antialias=True)
    return out


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(x / 255 - mean) / std for uint8 (or float 0-255) images -> float32, in two passes over memory.
    (Not bf16 even under autocast: CPUs have no bf16 arithmetic for elementwise ops, only for matmuls.)"""
    # Copied with non_blocking: no wait for the GPU.
    scale = torch.tensor([1 / (255 * s) for s in std]).to(images.device, non_blocking=True)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)]).to(images.device, non_blocking=True)
    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        # channels_last: seen as rows of W x C values, so that the per-channel factors repeat along
        # each row; broadcasting them over the innermost 3 channels instead is 5x slower on a CPU.
        n, channels, height, width = images.shape
        rows = images.permute(0, 2, 3, 1).reshape(n * height, width * channels)  # a view: (N H, W C)
        rows = rows.float().mul_(scale.repeat(width)).add_(shift.repeat(width))
        return rows.view(n, height, width, channels).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return images.float().mul_(scale.view(-1, 1, 1)).add_(shift.view(-1, 1, 1))


def lighting_shift(alpha: torch.Tensor, eigval: list[float], eigvec: list[list[float]]) -> torch.Tensor:
    """The RGB shift [p1, p2, p3] [alpha1 l1, alpha2 l2, alpha3 l3]^T of each image (alpha: (N, 3)) -> (N, 3)."""
    return (alpha * torch.tensor(eigval)) @ torch.tensor(eigvec).T


# ----------------------------------------------------------------------------------------------
# Evaluation.


def eval_transform(images: torch.Tensor, preset: EvalPreset) -> torch.Tensor:
    """The evaluation preprocessing, shared by train.py's validation and by inference.

    (..., C, H, W) uint8 -> (..., C, S, S) float32, normalised: resize the shorter side to
    `resize_size`, centre-crop `image_size`, scale to [0, 1], subtract the mean, divide by the std.
    """
    x = TF.center_crop(resized_square(images, preset.resize_size), [preset.image_size])
    x = TF.to_dtype(x, torch.float32, scale=True)
    return TF.normalize(x, preset.mean, preset.std)


def ten_crop_transform(images: torch.Tensor, preset: EvalPreset) -> torch.Tensor:
    """The paper's ten-crop testing: (..., C, H, W) uint8 -> (..., 10, C, S, S) float32, normalised.

    As the paper (section 4.1) describes it: the central square resized to `resize_size` (256 for
    ImageNet, as in eval_transform), then its four corner and its central S x S patches
    (S = `image_size`) and their horizontal reflections, in that order: top-left, top-right,
    bottom-left, bottom-right, centre, then the same five mirrored. Averaging the softmax over
    the ten (predict(..., tta="10crop")) is the paper's test-time prediction. A batch
    (B, C, H, W) gives (B, 10, C, S, S), on the images' device.
    """
    x = resized_square(images, preset.resize_size)
    size = preset.image_size
    # The reflections of the five patches, as the paper says; not the patches of the reflected
    # image, which differ from these in the centre patch by a pixel when resize - size is odd.
    five = torch.stack(TF.five_crop(x, [size, size]), dim=-4)  # (..., 5, C, S, S)
    crops = torch.cat([five, five.flip(-1)], dim=-4)  # (..., 10, C, S, S)
    crops = TF.to_dtype(crops, torch.float32, scale=True)
    return TF.normalize(crops, preset.mean, preset.std)


def flip_transform(images: torch.Tensor, preset: EvalPreset) -> torch.Tensor:
    """The centre crop and its mirror image: (..., C, H, W) uint8 -> (..., 2, C, S, S) float32, normalised.

    The cheapest test-time augmentation (twice the work of eval_transform), used by the fastest
    CIFAR-10 trainers; the paper's ten crops include these two views.
    """
    x = eval_transform(images, preset)
    return torch.stack([x, x.flip(-1)], dim=-4)  # (..., C, S, S) -> (..., 2, C, S, S)


def tta_transform(images: torch.Tensor, preset: EvalPreset, tta: str) -> torch.Tensor:
    """The evaluation input of each TTA mode: (..., C, S, S) for "none", else (..., K, C, S, S), K = TTA_VIEWS[tta]."""
    if tta == "flip":
        return flip_transform(images, preset)
    if tta == "10crop":
        return ten_crop_transform(images, preset)
    return eval_transform(images, preset)


def resized_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., C, size, size): the central square, resized (the shorter side to `size`)."""
    side = min(images.shape[-2:])
    # Only the central square can end up in a crop: cut it first, so that a long, thin image
    # (say 1 x 1,000,000 pixels, within PIL's pixel limit) is never resized whole.
    x = TF.center_crop(images, [side, side])
    if side != size:
        x = TF.resize(x, [size, size], antialias=True)
    return x


# ----------------------------------------------------------------------------------------------
# Statistics of the training images, for the presets.


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
    # A channel that never varies (synthetic data): one grey level, not a division by zero.
    std = std.clamp(min=1 / 255)
    return mean.tolist(), std.tolist()


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
    # What torch.cov gives on all pixels at once.
    covariance = (products - count * torch.outer(mean, mean)) / (count - 1)
    eigval, eigvec = torch.linalg.eigh(covariance)  # increasing order
    return eigval.flip(0).tolist(), eigvec.flip(1).tolist()
