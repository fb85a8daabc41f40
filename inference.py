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
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from alexnet import AlexNet

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def eval_transform(images: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """The evaluation preprocessing, shared by train.py's validation and by inference.

    (..., C, H, W) uint8 -> (..., C, S, S) float32, normalised: resize the shorter side to
    `resize_size`, centre-crop `image_size`, scale to [0, 1], subtract the mean, divide by the std.
    """
    x = TF.resize(images, [preprocess["resize_size"]], antialias=True)
    x = TF.center_crop(x, [preprocess["image_size"]])
    x = TF.to_dtype(x, torch.float32, scale=True)
    return TF.normalize(x, preprocess["mean"], preprocess["std"])


def pil_to_uint8(image: Image.Image, channels: int) -> torch.Tensor:
    """Any PIL image (L, LA, P, RGBA, CMYK, I;16, ...) -> (channels, H, W) uint8, upright per EXIF."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "I;16" or image.mode.startswith("I;16") or image.mode == "I":
        image = image.point(lambda value: value / 256).convert("L")  # 16-bit -> 8-bit
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))  # transparent -> white
    image = image.convert("L" if channels == 1 else "RGB")
    return TF.pil_to_tensor(image)


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """Read an image file fully (a truncated file fails here, not later) -> (C, H, W) uint8."""
    with Image.open(path) as image:
        image.load()
        return pil_to_uint8(image, channels)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[AlexNet, dict]:
    """Rebuild the model of a train.py checkpoint, in eval mode on `device`.

    Returns (model, meta) where meta holds "classes" and "preprocess" (see eval_transform).
    Checkpoints are loaded with weights_only=True: they hold tensors and plain Python data only.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = AlexNet(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    return model, {"classes": checkpoint["classes"], "preprocess": checkpoint["preprocess"]}


@torch.no_grad()
def predict(
    model: AlexNet, meta: dict, images: list, topk: int = 5, batch_size: int = 64
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) pairs, best first, for each image.

    `images` may mix file paths, PIL images and uint8 tensors (C, H, W); tensors of another dtype
    are taken as already preprocessed (C, S, S) model inputs.
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

    checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path(args.runs_dir))
    if checkpoint is None:
        parser.error(f"no checkpoint found in {args.runs_dir}/*/best.pt: train first (python train.py) or pass --checkpoint")
    if not checkpoint.is_file():
        parser.error(f"--checkpoint {checkpoint}: no such file")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    if args.device == "mps" and not torch.backends.mps.is_available():
        parser.error("--device mps: MPS is not available on this machine; use --device cpu")
    try:
        model, meta = load_checkpoint(checkpoint, args.device)
    except Exception as error:  # any unreadable or foreign file: one line, not a traceback
        parser.error(f"--checkpoint {checkpoint}: cannot load it as a train.py checkpoint ({error})".splitlines()[0])
    if args.labels:
        labels_path = Path(args.labels)
        if not labels_path.is_file():
            parser.error(f"--labels {labels_path}: no such file")
        labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
        if len(labels) != len(meta["classes"]):
            parser.error(f"--labels {labels_path}: has {len(labels)} names but the model has {len(meta['classes'])} classes")
        meta["classes"] = labels

    # Decode every file first: a bad file is reported and skipped, the others still classified.
    good, decoded, failures = [], [], 0
    for path in expand_inputs(args.images):
        try:
            decoded.append(load_image(path, meta["preprocess"]["in_channels"]))
            good.append(path)
        except FileNotFoundError:
            print(f"error: {path}: no such file", file=sys.stderr)
            failures += 1
        except (UnidentifiedImageError, OSError, ValueError) as error:
            reason = "not an image" if isinstance(error, UnidentifiedImageError) else f"unreadable image ({error})"
            print(f"error: {path}: {reason}", file=sys.stderr)
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
        print(f"{failures} of {failures + len(good)} images could not be classified", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
