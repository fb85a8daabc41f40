"""Classify images with a trained AlexNet checkpoint: top-k classes with softmax confidences.

Usage:
    python inference.py runs/shapes-*/samples/*.png          # best.pt of the most recent run
    python inference.py photo.jpg photos/ --checkpoint runs/cifar10/best.pt --topk 3
    python inference.py photo.jpg --labels imagenet_classes.txt --json

In a notebook:
    >>> from inference import load_checkpoint, predict
    >>> model, meta = load_checkpoint("runs/shapes/best.pt")
    >>> predict(model, meta, ["a.png", PIL.Image.open("b.jpg")], topk=3)
    [[('circle', 0.97), ('ring', 0.02), ('flower', 0.01)], ...]

Bad inputs raise one documented error each, with a one-line message that names the file:
BadImageError for an image file that cannot be read, CheckpointError for a checkpoint that cannot
be used. The command line reports them as `error: ...` and exits with status 1.
"""

import argparse
import json
import pickle
import re
import stat
import sys
import warnings
import zipfile
from pathlib import Path

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


def eval_transform(images: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """The evaluation preprocessing, shared by train.py's validation and by inference.

    (..., C, H, W) uint8 -> (..., C, S, S) float32, normalised: resize the shorter side to
    `resize_size`, centre-crop `image_size`, scale to [0, 1], subtract the mean, divide by the std.
    """
    side = min(images.shape[-2:])
    # Only the central square can end up in the crop: cut it first, so that a long, thin image
    # (say 1 x 1,000,000 pixels, within PIL's pixel limit) is never resized whole.
    x = TF.center_crop(images, [side, side])
    if side != preprocess["resize_size"]:
        x = TF.resize(x, [preprocess["resize_size"]] * 2, antialias=True)
    x = TF.center_crop(x, [preprocess["image_size"]])
    x = TF.to_dtype(x, torch.float32, scale=True)
    return TF.normalize(x, preprocess["mean"], preprocess["std"])


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
    path = Path(path)
    checkpoint = read_checkpoint(path)
    check_checkpoint_contents(checkpoint, path)
    model = build_model(checkpoint["model_config"], path)
    check_classes_and_preprocess(checkpoint, model, path)
    check_weights(model, checkpoint["model"], path)
    model.load_state_dict(checkpoint["model"])  # cannot fail after check_weights
    model.to(device).eval()
    return model, {"classes": list(checkpoint["classes"]), "preprocess": checkpoint["preprocess"]}


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


# Classifying ----------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: AlexNet, meta: dict, images: list, topk: int = 5, batch_size: int = 64
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) pairs, best first, for each image.

    `images` may mix file paths, PIL images and uint8 tensors (C, H, W); tensors of another dtype
    are taken as already preprocessed (C, S, S) model inputs. A path that cannot be read as an
    image raises BadImageError.
    """
    device = next(model.parameters()).device
    preprocess, classes = meta["preprocess"], meta["classes"]
    inputs = []
    for image in images:
        if isinstance(image, (str, Path)):
            image = load_image(image, preprocess["in_channels"])
        elif isinstance(image, Image.Image):
            image = pil_to_uint8(image, preprocess["in_channels"])
        inputs.append(eval_transform(image, preprocess) if image.dtype == torch.uint8 else image)
    results = []
    for start in range(0, len(inputs), batch_size):
        batch = torch.stack(inputs[start : start + batch_size]).to(device)
        probabilities = model(batch).float().softmax(dim=1)  # (B, num_classes)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files or directories of images")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to use (default: best.pt of the newest run in --runs-dir)")
    parser.add_argument("--runs-dir", default="runs", help="where train.py writes its runs")
    parser.add_argument("--topk", type=int, default=5, help="how many classes to show per image")
    parser.add_argument("--labels", default=None, help="text file with one class name per line, overriding the checkpoint's")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    args = parser.parse_args()
    if args.topk < 1:
        parser.error("--topk must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")

    checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path(args.runs_dir))
    if checkpoint is None:
        parser.error(f"no checkpoint found in {args.runs_dir}/*/best.pt: train first (python train.py) or pass --checkpoint")
    if not checkpoint.exists():
        parser.error(f"--checkpoint {checkpoint}: no such file")
    check_device(parser, args.device)
    try:
        model, meta = load_checkpoint(checkpoint, args.device)
    except CheckpointError as error:  # one line, not a traceback; a broken input is not a usage error: status 1
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if args.labels:
        meta["classes"] = read_labels(parser, args.labels, len(meta["classes"]))

    # Decode every file first: a bad file is reported and skipped, the others still classified.
    good, decoded, failures = [], [], 0
    for name in args.images:
        files = expand_inputs([name])
        if not files:  # a directory without a single image file
            print(f"error: {name}: no image files ({' '.join(sorted(IMAGE_EXTENSIONS))}) in this directory", file=sys.stderr)
            failures += 1
        for path in files:
            try:
                decoded.append(load_image(path, meta["preprocess"]["in_channels"]))
                good.append(path)
            except BadImageError as error:
                print(f"error: {error}", file=sys.stderr)
                failures += 1
    results = predict(model, meta, decoded, topk=args.topk, batch_size=args.batch_size) if decoded else []

    for path, top in zip(good, results):
        if args.json:
            print(json.dumps({"image": str(path), "predictions": [{"class": c, "probability": p} for c, p in top]}))
        else:
            print(f"{path}:")
            for name, probability in top:
                print(f"  {100 * probability:6.2f}%  {name}")
    if failures:
        print(f"{failures} of {failures + len(good)} inputs could not be classified", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
