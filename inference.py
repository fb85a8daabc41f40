"""Classify images with a trained AlexNet checkpoint: top-k classes with softmax confidences.

Usage:
    python inference.py runs/shapes-*/samples/*.png          # best.pt of the most recent run
    python inference.py photo.jpg photos/ --checkpoint runs/cifar10/best.pt --topk 3
    python inference.py photo.jpg --labels imagenet_classes.txt --json
    python inference.py photo.jpg --weights imagenet --tta 10crop --plot top5.png   # torchvision's ImageNet weights

`--tta 10crop` averages the softmax over ten crops per image, the paper's test-time augmentation
(see ten_crop_transform). `--plot OUT.png` draws each image beside a bar chart of its top-k
classes; with more than one image file, OUT gets the image's index (counted from 0 over the image
files, in the order given, directories expanded) before its suffix: out-0.png, out-1.png, ...
`--weights imagenet` uses torchvision's pretrained AlexNet (IMAGENET1K_V1, ImageNet's 1000
classes) instead of a checkpoint: downloaded once into torch's cache ($TORCH_HOME/hub/checkpoints/,
by default ~/.cache/torch/hub/checkpoints/); offline, copy the file there (the error says where).

In a notebook:
    >>> from inference import load_checkpoint, predict
    >>> model, meta = load_checkpoint("runs/shapes/best.pt")
    >>> predict(model, meta, ["a.png", PIL.Image.open("b.jpg")], topk=3)
    [[('circle', 0.97), ('ring', 0.02), ('flower', 0.01)], ...]
    >>> predict(model, meta, ["a.png"], tta="10crop")                 # the paper's ten-crop testing
    >>> model, meta = load_imagenet_weights()                           # torchvision's ImageNet weights

Bad inputs raise one documented error each, with a one-line message that names the file:
BadImageError for an image file that cannot be read, CheckpointError for a checkpoint that cannot
be used. The command line reports them as `error: ...` and exits with status 1.
"""

import argparse
import contextlib
import json
import math
import pickle
import re
import stat
import sys
import warnings
import zipfile
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlparse

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from alexnet import AlexNet

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# PIL hands EPS files to Ghostscript, an interpreter with a history of code-execution bugs, and
# recognises them by content, whatever the extension: never open one.
REFUSED_FORMATS = {"EPS"}
CHECKPOINT_KEYS = ("model", "model_config", "classes", "preprocess")
PREPROCESS_KEYS = ("image_size", "resize_size", "mean", "std", "in_channels")
TTA_MODES = ("none", "10crop")
# The evaluation preprocessing torchvision's ImageNet weights were trained for (their transforms():
# resize 256, centre crop 224, ImageNet's mean and std).
IMAGENET_PREPROCESS = {"image_size": 224, "resize_size": 256, "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "in_channels": 3}


class BadImageError(ValueError):
    """An image file that cannot be read: missing, a directory, unreadable, empty, not an image,
    corrupt, truncated, too large (a possible decompression bomb) or in an unsupported mode.

    The message is one line, "PATH: what is wrong". train.py skips and counts such files;
    inference.py reports them and classifies the rest.
    """


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, not a checkpoint, truncated, refused as unsafe
    (it would run code when unpickled), missing keys, or weights that do not fit its model_config.

    The message is one line, "PATH: what is wrong". Nothing is loaded when it is raised.
    """


class DownloadError(CheckpointError):
    """Pretrained weights that are not in torch's cache and cannot be downloaded (no network, a
    proxy, an HTTP error). The message is one line naming the cache path to copy the file to and
    the URL to fetch it from elsewhere.
    """


def eval_transform(images: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """The evaluation preprocessing, shared by train.py's validation and by inference.

    (..., C, H, W) uint8 -> (..., C, S, S) float32, normalised: resize the shorter side to
    `resize_size`, centre-crop `image_size`, scale to [0, 1], subtract the mean, divide by the std.
    """
    x = TF.center_crop(resized_square(images, preprocess["resize_size"]), [preprocess["image_size"]])
    x = TF.to_dtype(x, torch.float32, scale=True)
    return TF.normalize(x, preprocess["mean"], preprocess["std"])


def resized_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., C, size, size): the central square, resized (the shorter side to `size`)."""
    side = min(images.shape[-2:])
    # Only the central square can end up in a crop: cut it first, so that a long, thin image
    # (say 1 x 1,000,000 pixels, within PIL's pixel limit) is never resized whole.
    x = TF.center_crop(images, [side, side])
    if side != size:
        x = TF.resize(x, [size, size], antialias=True)
    return x


def ten_crop_transform(images: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """The paper's ten-crop testing: (..., C, H, W) uint8 -> (..., 10, C, S, S) float32, normalised.

    As the paper (section 4.1) describes it: the central square resized to `resize_size` (256 for
    ImageNet, as in eval_transform), then its four corner and its central S x S patches
    (S = `image_size`) and their horizontal reflections, in that order: top-left, top-right,
    bottom-left, bottom-right, centre, then the same five mirrored. Averaging the softmax over
    the ten (predict(..., tta="10crop")) is the paper's test-time prediction. A batch
    (B, C, H, W) gives (B, 10, C, S, S), on the images' device.
    """
    x = resized_square(images, preprocess["resize_size"])
    size = preprocess["image_size"]
    # The reflections of the five patches, as the paper says; not the patches of the reflected
    # image, which differ from these in the centre patch by a pixel when resize - size is odd.
    five = torch.stack(TF.five_crop(x, [size, size]), dim=-4)  # (..., 5, C, S, S)
    crops = torch.cat([five, five.flip(-1)], dim=-4)  # (..., 10, C, S, S)
    crops = TF.to_dtype(crops, torch.float32, scale=True)
    return TF.normalize(crops, preprocess["mean"], preprocess["std"])


# Images ---------------------------------------------------------------------------------------


def pil_to_uint8(image: Image.Image, channels: int) -> torch.Tensor:
    """Any PIL image -> (channels, H, W) uint8, upright per its EXIF Orientation tag.

    1, L, P, RGB, CMYK, YCbCr, ... convert directly; 16-bit (I;16, I;16B, I) keep their top 8 bits
    (65535 -> 255, 32768 -> 128); transparency (RGBA, LA, PA, P or L/RGB with a transparent colour)
    is composited onto white. Multi-frame images (animated GIF) give their current frame.
    Raises ValueError for modes PIL cannot convert (e.g. La).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # convert("L") alone would clip every value above 255 to white. Going through "I" first
        # because point() does not support the big-endian I;16B of 16-bit TIFFs.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))  # transparent -> white
    image = image.convert("L" if channels == 1 else "RGB")
    return TF.pil_to_tensor(image)


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """Read an image file fully (a truncated file fails here, not later) -> (C, H, W) uint8.

    Raises BadImageError, and nothing else, for any file that cannot be read: missing, a
    directory, no permission, empty, not an image, corrupt or truncated, an unsupported mode, or
    more than PIL.Image.MAX_IMAGE_PIXELS pixels (a possible decompression bomb; refused before
    decoding). See pil_to_uint8 for the modes handled.
    """
    image = open_image(path)
    try:
        return pil_to_uint8(image, channels)
    except Exception as error:  # e.g. a mode PIL cannot convert
        raise BadImageError(f"{path}: {image_error_reason(error)}") from error
    finally:
        image.close()


def open_image(path: str | Path, draft_size: int | None = None, header_only: bool = False) -> Image.Image:
    """Open an image file with the checks of load_image; decoded unless `header_only` (then only
    .size and .mode are known). `draft_size`: JPEGs may be decoded at 1/2, 1/4 or 1/8 scale as
    long as both sides stay at least this large (libjpeg's DCT scaling: much faster for photos
    far larger than the model needs)."""
    path = Path(path)
    try:
        check_regular_file(path)
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=open_formats())
            try:
                if header_only:
                    return image
                if draft_size is not None and image.format == "JPEG":
                    image.draft(None, (draft_size, draft_size))
                image.load()
                return image
            except BaseException:
                image.close()
                raise
    except BadImageError:
        raise
    except Exception as error:  # PIL's decoders raise many types on bad data (see image_error_reason)
        raise BadImageError(f"{path}: {image_error_reason(error)}") from error


def check_regular_file(path: Path) -> None:
    """Raise BadImageError for a directory, a FIFO or device (opening one could block) or an empty file."""
    info = path.stat()  # FileNotFoundError, PermissionError: worded by image_error_reason
    if stat.S_ISDIR(info.st_mode):
        raise BadImageError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise BadImageError(f"{path}: not a regular file (a pipe or device?)")
    if info.st_size == 0:
        raise BadImageError(f"{path}: empty file (0 bytes), not an image; was it downloaded or copied completely?")


def open_formats() -> list[str]:
    """Every format this PIL can open, less REFUSED_FORMATS."""
    Image.init()  # registers all plugins; only the first call does any work
    return [name for name in Image.ID if name not in REFUSED_FORMATS]


def image_error_reason(error: Exception) -> str:
    """What went wrong reading an image, in words, from whatever PIL or the OS raised.

    Seen in practice: UnidentifiedImageError (not an image), OSError (truncated or broken data),
    SyntaxError and ValueError (malformed headers), EOFError, struct.error, IndexError, TypeError,
    MemoryError; plus DecompressionBombError/Warning for images over the pixel limit.
    """
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        pixels = re.search(r"\((\d+) pixels\)", str(error))  # PIL says "Image size (N pixels) exceeds limit of ..."
        size = f"{int(pixels[1]):,} pixels" if pixels else "too many pixels"
        return (f"refused as a possible decompression bomb: {size}, over the limit of {Image.MAX_IMAGE_PIXELS:,} "
                "(PIL.Image.MAX_IMAGE_PIXELS; raise it if the image is genuine)")
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, PermissionError):
        return "permission denied: cannot read the file (check its permissions)"
    if isinstance(error, UnidentifiedImageError):  # before OSError, its base class
        return "not an image (PIL recognises no image format in it; a text or other file with an image extension?)"
    if isinstance(error, OSError) and "truncated" in str(error):
        return "truncated image: the file ends early; was it downloaded or copied completely?"
    if isinstance(error, ValueError) and "conversion from" in str(error):
        return f"unsupported image mode ({first_sentence(str(error))})"
    return f"corrupt or unsupported image ({type(error).__name__}: {first_sentence(str(error)) or 'no details'})"


def first_sentence(text: str) -> str:
    """The first non-empty line of an error message, up to its first full stop: for one-line errors."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line.split(". ")[0].rstrip(".")


# Checkpoints ----------------------------------------------------------------------------------


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[AlexNet, dict]:
    """Rebuild the model of a train.py checkpoint, in eval mode on `device`.

    Returns (model, meta) where meta holds "classes" and "preprocess" (see eval_transform).
    Checkpoints are loaded with weights_only=True: they hold tensors and plain Python data only;
    anything else is refused unread, since unpickling it could run arbitrary code.
    Raises CheckpointError, with a one-line message naming the path, for a file that is missing,
    not a checkpoint, truncated, refused as unsafe, missing keys, or whose weights do not fit its
    model_config.
    """
    checkpoint = read_checked_checkpoint(Path(path))
    model = AlexNet(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])  # cannot fail after the checks
    model.to(device).eval()
    return model, {"classes": list(checkpoint["classes"]), "preprocess": checkpoint["preprocess"]}


def read_checked_checkpoint(path: Path) -> dict:
    """A train.py checkpoint as a dict, checked so that AlexNet(**checkpoint["model_config"]) builds
    and loads checkpoint["model"]; CheckpointError (one line) otherwise. train.py's --resume and
    --evaluate read checkpoints through this too."""
    checkpoint = read_checkpoint(path)
    check_checkpoint_contents(checkpoint, path)
    with torch.device("meta"):  # shapes only: no time or memory spent on 58 M real parameters
        model = build_model(checkpoint["model_config"], path)
    check_classes_and_preprocess(checkpoint, model, path)
    check_weights(model, checkpoint["model"], path)
    return checkpoint


def read_checkpoint(path: Path) -> object:
    """torch.load(path, weights_only=True), with every failure turned into one CheckpointError."""
    try:
        info = path.stat()
    except OSError as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else f"cannot read it ({error.strerror})"
        raise CheckpointError(f"{path}: {reason}") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if info.st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; was it written or copied completely?")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's pickle-protocol warning on foreign files: the error says it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises UnpicklingError, RuntimeError, EOFError, KeyError, ... on bad files
        raise CheckpointError(f"{path}: {checkpoint_error_reason(path, error)}") from None


def checkpoint_error_reason(path: Path, error: Exception) -> str:
    """Why torch.load failed, judged from the error and the file's first bytes (which say its format)."""
    with open(path, "rb") as file:
        header = file.read(4)
    is_zip = header == b"PK\x03\x04"  # torch.save's format: a zip archive holding data.pkl and the tensors
    is_pickle = header[:1] == b"\x80" and header[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # a protocol 2-5 pickle
    reason = first_sentence(str(error).split("WeightsUnpickler error:")[-1]) or type(error).__name__
    if isinstance(error, pickle.UnpicklingError) and (is_zip or is_pickle):
        # The weights-only unpickler stops at the first thing that is not a tensor or plain data
        # (a class to import, a function to call, an opcode it does not know): a full unpickle
        # would have run it.
        return (f"refused as unsafe and not loaded: PyTorch's weights-only loader, which reads only tensors and "
                f"plain data, rejected it ({reason}), and a full unpickle could run arbitrary code; "
                "load only checkpoints written by train.py")
    if is_zip and not zipfile.is_zipfile(path):
        return "truncated or corrupt checkpoint (its zip archive is incomplete); was it written or copied completely?"
    if is_zip:
        return "a zip archive, but not one torch.save wrote (or a damaged one)"
    if is_pickle:
        return f"truncated or corrupt checkpoint ({type(error).__name__}: {reason})"
    return "not a PyTorch checkpoint: neither a zip archive (torch.save's format) nor a pickle"


def check_checkpoint_contents(checkpoint: object, path: Path) -> None:
    """Raise CheckpointError unless `checkpoint` is a dict with the keys train.py writes."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a train.py checkpoint: it holds a {type(checkpoint).__name__}, "
                              f"not a dict with {', '.join(CHECKPOINT_KEYS)}")
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        bare = checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values())
        hint = " (it looks like a bare model.state_dict(); inference needs the checkpoint train.py writes)" if bare else ""
        raise CheckpointError(f"{path}: not a train.py checkpoint: no {', '.join(missing)}{hint}")
    preprocess = checkpoint["preprocess"]
    missing = [key for key in PREPROCESS_KEYS if not isinstance(preprocess, dict) or key not in preprocess]
    if missing:
        raise CheckpointError(f"{path}: its preprocess lacks {', '.join(missing)}")
    if not isinstance(checkpoint["model_config"], dict) or not isinstance(checkpoint["model"], dict):
        raise CheckpointError(f"{path}: its model_config and model must be dicts (a config and a state_dict)")


def build_model(config: dict, path: Path) -> AlexNet:
    """AlexNet(**config), or CheckpointError if the stored config does not describe one."""
    try:
        return AlexNet(**config)
    except Exception as error:  # unknown keyword (TypeError), impossible sizes (RuntimeError, ValueError)
        raise CheckpointError(f"{path}: its model_config {config} does not describe an AlexNet "
                              f"({type(error).__name__}: {first_sentence(str(error))})") from None


def check_classes_and_preprocess(checkpoint: dict, model: AlexNet, path: Path) -> None:
    """Raise CheckpointError if the class names or input channels disagree with the model."""
    classes, num_classes = checkpoint["classes"], model.config["num_classes"]
    if not isinstance(classes, (list, tuple)) or len(classes) != num_classes:
        count = len(classes) if isinstance(classes, (list, tuple)) else type(classes).__name__
        raise CheckpointError(f"{path}: has {count} class names but its model has {num_classes} outputs")
    if checkpoint["preprocess"]["in_channels"] != model.config["in_channels"]:
        raise CheckpointError(f"{path}: preprocess.in_channels is {checkpoint['preprocess']['in_channels']} "
                              f"but the model takes {model.config['in_channels']} channels")


def check_weights(model: AlexNet, weights: dict, path: Path) -> None:
    """Raise CheckpointError, naming the first difference, unless `weights` fit `model` exactly and are finite.

    load_state_dict would say the same in a multi-line dump of every difference; one line is enough
    to see what went wrong (usually a model_config that is not the one the weights were trained with).
    """
    expected = model.state_dict()
    differences = []
    for key, tensor in expected.items():
        if key not in weights:
            differences.append(f"{key} is missing")
        elif not isinstance(weights[key], torch.Tensor):
            differences.append(f"{key} is a {type(weights[key]).__name__}, not a tensor")
        elif not weights[key].is_floating_point():
            differences.append(f"{key} has dtype {weights[key].dtype}, not a floating-point type")
        elif weights[key].shape != tensor.shape:
            differences.append(f"{key} has shape {tuple(weights[key].shape)} in the file "
                               f"but {tuple(tensor.shape)} in the model its model_config describes")
    differences += [f"{key} is not a weight of this model" for key in weights if key not in expected]
    if differences:
        others = len(differences) - 1
        more = f" (and {others} more difference{'s' * (others > 1)})" if others else ""
        raise CheckpointError(f"{path}: weights do not match its model_config {model.config}: {differences[0]}{more}")
    for key in expected:
        if not torch.isfinite(weights[key]).all():
            raise CheckpointError(f"{path}: weight {key} holds NaN or infinite values (saved from a diverged run?)")


# torchvision's pretrained weights -------------------------------------------------------------


def imagenet_weights():
    """torchvision's AlexNet_Weights.IMAGENET1K_V1 (its URL, class names, and the file's cache location)."""
    from torchvision.models import AlexNet_Weights  # imported here: torchvision.models is slow to import

    return AlexNet_Weights.IMAGENET1K_V1


def imagenet_cache_path() -> Path:
    """Where torch's cache keeps the IMAGENET1K_V1 file: $TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth
    (by default ~/.cache/torch/...), the file name from the weights' URL, as torch.hub names it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(imagenet_weights().url).path).name


def imagenet_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet AlexNet weights (IMAGENET1K_V1) as a state_dict for
    `AlexNet.from_torchvision` (train.py fine-tunes from it).

    Fetched through torchvision's own API, which reads the file from torch's cache (see
    imagenet_cache_path) or downloads it there first (233 MB; `progress` shows a bar on stderr).
    Read with weights_only=True like any checkpoint. Raises DownloadError (one line: the URL and
    the cache path to copy the file to) when the file is not cached and cannot be downloaded, and
    CheckpointError when the cached file is unusable (truncated, not these weights).
    """
    weights = imagenet_weights()
    path = imagenet_cache_path()
    try:
        # torch.hub announces a download on stdout: keep stdout for the results (--json).
        with contextlib.redirect_stdout(sys.stderr):
            state_dict = weights.get_state_dict(progress=progress, weights_only=True)
    except Exception as error:
        if not path.is_file():  # nothing cached (torch.hub moves a download into place only once complete): no network, HTTP error, ...
            reason = error if isinstance(error, HTTPError) else getattr(error, "reason", None) or error  # URLError wraps the socket error
            reason = first_sentence(str(reason)) or type(error).__name__
            raise DownloadError(f"{path}: torchvision's ImageNet weights are not cached here and downloading them failed "
                                f"({reason}); without network, fetch {weights.url} elsewhere and copy it to this path") from None
        if isinstance(error, OSError):  # e.g. no permission to read the cached file
            raise CheckpointError(f"{path}: cannot read it ({first_sentence(str(error)) or type(error).__name__})") from None
        # torch.load's errors on a truncated, corrupt or unsafe file
        raise CheckpointError(f"{path}: {checkpoint_error_reason(path, error)}; delete it to download it again") from None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: holds a {type(state_dict).__name__}, not a state_dict; delete it to download it again")
    with torch.device("meta"):  # shapes only: building the 61M-parameter model for real would cost time and memory
        expected = AlexNet.torchvision()
    check_weights(expected, state_dict, path)
    return state_dict


def load_imagenet_weights(device: str | torch.device = "cpu", progress: bool = True) -> tuple[AlexNet, dict]:
    """torchvision's pretrained AlexNet (IMAGENET1K_V1) in this repository's AlexNet, in eval mode
    on `device`, with meta like load_checkpoint's: ImageNet's 1000 class names as torchvision ships
    them ("tench", "goldfish", ...) and IMAGENET_PREPROCESS. Raises DownloadError or
    CheckpointError as imagenet_state_dict does.
    """
    model = AlexNet.from_torchvision(imagenet_state_dict(progress))
    meta = {"classes": list(imagenet_weights().meta["categories"]), "preprocess": dict(IMAGENET_PREPROCESS)}
    return model.to(device).eval(), meta


# Classifying ----------------------------------------------------------------------------------


def class_log_probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the classes, in float32, of (B, C, S, S) images -> (B, num_classes); for
    (B, K, C, S, S), K crops of each image (10-crop testing), of their averaged probabilities."""
    crops = images.shape[1] if images.ndim == 5 else 1
    log_probs = model(images.flatten(0, 1) if crops > 1 else images).float().log_softmax(dim=1)
    if crops > 1:  # log of the mean of the crops' softmax, without leaving log space
        log_probs = log_probs.view(-1, crops, log_probs.shape[1]).logsumexp(dim=1) - math.log(crops)
    return log_probs


@torch.no_grad()
def predict(
    model: AlexNet, meta: dict, images: list, topk: int = 5, batch_size: int = 64, tta: str | None = None
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) pairs, best first, for each image.

    `images` may mix file paths, PIL images and uint8 tensors (C, H, W); tensors of another dtype
    are taken as already preprocessed model inputs: (C, S, S), or (10, C, S, S) with tta="10crop".
    A path that cannot be read as an image raises BadImageError.
    `tta`: None or "none" classifies the centre crop (eval_transform); "10crop" averages the
    softmax over the paper's ten crops (ten_crop_transform), ten times the work. `batch_size`
    counts model inputs: with "10crop", batch_size // 10 images (at least one) go through at once.
    """
    if tta not in (None, *TTA_MODES):
        raise ValueError(f"tta must be None or one of {TTA_MODES}, got {tta!r}")
    ten_crop = tta == "10crop"
    transform = ten_crop_transform if ten_crop else eval_transform
    device = next(model.parameters()).device
    preprocess, classes = meta["preprocess"], meta["classes"]
    inputs = []
    for image in images:
        if isinstance(image, (str, Path)):
            image = load_image(image, preprocess["in_channels"])
        elif isinstance(image, Image.Image):
            image = pil_to_uint8(image, preprocess["in_channels"])
        elif image.dtype != torch.uint8 and image.ndim != (4 if ten_crop else 3):
            expected = "(10, C, S, S) crops with tta='10crop'" if ten_crop else "(C, S, S)"
            raise ValueError(f"a preprocessed input must be {expected}, got shape {tuple(image.shape)}")
        inputs.append(transform(image, preprocess) if image.dtype == torch.uint8 else image)
    images_per_batch = max(1, batch_size // 10) if ten_crop else batch_size
    results = []
    for start in range(0, len(inputs), images_per_batch):
        batch = torch.stack(inputs[start : start + images_per_batch]).to(device)  # (B, C, S, S) or (B, 10, C, S, S)
        probabilities = class_log_probabilities(model, batch).exp()  # (B, num_classes)
        values, indices = probabilities.topk(min(topk, len(classes)), dim=1)
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            results.append([(classes[i], p) for i, p in zip(row_indices, row_values)])
    return results


def latest_checkpoint(runs_dir: Path) -> Path | None:
    """best.pt of the most recently modified run directory, if any."""
    candidates = sorted(runs_dir.glob("*/best.pt"), key=lambda path: path.stat().st_mtime)
    return candidates[-1] if candidates else None


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given; directories replaced by the image files they contain (sorted)."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        else:
            files.append(path)
    return files


def check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """parser.error unless `name` is a device torch knows and this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name}: not a device name; use cpu, cuda, cuda:1 or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        parser.error("--device mps: MPS is not available on this machine; use --device cpu")


def read_labels(parser: argparse.ArgumentParser, name: str, num_classes: int) -> list[str]:
    """The class names of a --labels file, one a line, or parser.error saying what is wrong with it."""
    try:
        labels = [line.strip() for line in Path(name).read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        parser.error(f"--labels {name}: no such file")
    except (OSError, UnicodeDecodeError) as error:
        parser.error(f"--labels {name}: cannot read it as UTF-8 text ({first_sentence(str(error))})")
    if len(labels) != num_classes:
        parser.error(f"--labels {name}: has {len(labels)} names but the model has {num_classes} classes")
    return labels


def plot_path(out: Path, index: int, several: bool) -> Path:
    """--plot's file for the image file at `index`: OUT itself for a single image, else OUT with
    the index before its suffix (out.png -> out-0.png, out-1.png, ...)."""
    return out.with_name(f"{out.stem}-{index}{out.suffix}") if several else out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files or directories of images")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None, help="checkpoint to use (default: best.pt of the newest run in --runs-dir)")
    source.add_argument("--weights", default=None, choices=["imagenet"],
                        help="instead of a checkpoint: torchvision's pretrained ImageNet AlexNet (IMAGENET1K_V1), "
                             "downloaded once into $TORCH_HOME/hub/checkpoints/")
    parser.add_argument("--runs-dir", default="runs", help="where train.py writes its runs")
    parser.add_argument("--topk", type=int, default=5, help="how many classes to show per image")
    parser.add_argument("--labels", default=None, help="text file with one class name per line, overriding the checkpoint's")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=64, help="model inputs per forward pass (an image is 10 with --tta 10crop)")
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation: none (centre crop) or 10crop (the paper's ten crops, softmax averaged)")
    parser.add_argument("--plot", default=None, metavar="OUT.png",
                        help="draw each image beside its top-k bar chart; with several image files, OUT-<index>.png per image")
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error("--topk must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")

    if args.plot and Path(args.plot).suffix.lower() != ".png":
        parser.error(f"--plot {args.plot}: the picture is a PNG; give a file name ending in .png")
    if args.plot and not Path(args.plot).parent.is_dir():
        parser.error(f"--plot {args.plot}: no such directory {Path(args.plot).parent}")

    checkpoint = None
    if not args.weights:
        checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path(args.runs_dir))
        if checkpoint is None:
            parser.error(f"no checkpoint found in {args.runs_dir}/*/best.pt: train first (python train.py), "
                         "pass --checkpoint, or use --weights imagenet")
        if not checkpoint.exists():
            parser.error(f"--checkpoint {checkpoint}: no such file")
    check_device(parser, args.device)
    try:
        if checkpoint is None:
            model, meta = load_imagenet_weights(args.device)
        else:
            model, meta = load_checkpoint(checkpoint, args.device)
    except CheckpointError as error:  # one line, not a traceback; a broken input (or no network) is not a usage error: status 1
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if args.labels:
        meta["classes"] = read_labels(parser, args.labels, len(meta["classes"]))

    # Decode every file first: a bad file is reported and skipped, the others still classified.
    good, indices, decoded, failures, count = [], [], [], 0, 0
    for name in args.images:
        files = expand_inputs([name])
        if not files:  # a directory without a single image file
            print(f"error: {name}: no image files ({' '.join(sorted(IMAGE_EXTENSIONS))}) in this directory", file=sys.stderr)
            failures += 1
        for path in files:
            count += 1
            try:
                decoded.append(load_image(path, meta["preprocess"]["in_channels"]))
                good.append(path)
                indices.append(count - 1)  # --plot numbers every image file, so a bad one does not shift the others
            except BadImageError as error:
                print(f"error: {error}", file=sys.stderr)
                failures += 1
    results = predict(model, meta, decoded, topk=args.topk, batch_size=args.batch_size, tta=args.tta) if decoded else []

    for path, top in zip(good, results):
        if args.json:
            print(json.dumps({"image": str(path), "predictions": [{"class": c, "probability": p} for c, p in top]}))
        else:
            print(f"{path}:")
            for name, probability in top:
                print(f"  {100 * probability:6.2f}%  {name}")
    unwritten = 0
    if args.plot:
        from plots import plot_topk  # imported here: matplotlib only when a picture is asked for

        for path, index, image, top in zip(good, indices, decoded, results):
            out = plot_path(Path(args.plot), index, count > 1)
            try:
                plot_topk(image, top, out, title=path.name)
            except OSError as error:  # e.g. a directory of that name, or a folder we cannot write to
                print(f"error: --plot {out}: cannot write the picture ({error.strerror or error}); choose another path", file=sys.stderr)
                unwritten += 1

    if failures:
        print(f"{failures} of {failures + len(good)} inputs could not be classified", file=sys.stderr)
    if failures or unwritten:
        sys.exit(1)


if __name__ == "__main__":
    main()
