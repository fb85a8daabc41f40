"""Classify images with a trained AlexNet checkpoint: top-k classes with softmax confidences.

Usage:
    python inference.py runs/shapes-*/samples/*.png          # best.pt of the most recent run
    python inference.py photo.jpg photos/ --checkpoint runs/cifar10/best.pt --topk 3
    python inference.py photo.jpg --labels imagenet_classes.txt --json
    python inference.py photo.jpg --weights imagenet --tta 10crop --plot top5.png   # torchvision's ImageNet weights
    python inference.py --export shapes.onnx --checkpoint runs/shapes/best.pt     # or shapes.pt2
    python inference.py photos/ --checkpoint shapes.onnx --output results.csv        # or results.jsonl

`--tta 10crop` averages the softmax over ten crops per image, the paper's test-time augmentation
(see ten_crop_transform). `--plot OUT.png` draws each image beside a bar chart of its top-k
classes; with more than one image file, OUT gets the image's index (counted from 0 over the image
files, in the order given, directories expanded) before its suffix: out-0.png, out-1.png, ...
`--export FILE.onnx` (ONNX, for ONNX Runtime, TensorRT, Triton) or `--export FILE.pt2`
(torch.export) writes the network with its class names and preprocessing as metadata, once its
logits are checked against the checkpoint's (random inputs, rendered images and any IMAGEs given;
at most 1e-4 apart); `--checkpoint FILE.onnx` or `FILE.pt2` then classifies with that file (ONNX
files run on ONNX Runtime's CPU provider). `--output FILE.csv` or `FILE.jsonl` also writes one row
per image: its top-k, or why it could not be read (see export.py and result_files.py).
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
be used, ExportError for an export that fails or an exported file that cannot be used (all in
errors.py). The command line reports them as `error: ...` and exits with status 1.

This script is the command line; the work is done by the library modules it imports:
image_files.py (reading images), checkpoints.py, pretrained.py, presets.py (preprocessing),
engine.py (`predict`), export.py (ONNX and .pt2) and result_files.py (--output). `load_checkpoint`,
`load_imagenet_weights` and `predict` are importable from here too, for notebooks.
"""

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from atomic_files import DiskFullError
from checkpoints import latest_checkpoint, load_checkpoint
from display_text import displayable, printable
from engine import pick_device, predict
from errors import BadImageError, CheckpointError, ExportError, first_sentence
from export import EXPORT_FORMATS, PARITY_BATCH, check_writable, export_format, export_model, load_exported
from image_files import IMAGE_EXTENSIONS, expand_inputs, load_image
from presets import TTA_MODES, TTA_VIEWS, tta_transform
from pretrained import load_imagenet_weights
from result_files import ResultRow, result_format, write_results

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # https://..., file://...: a URL, not a file name

__all__ = ["load_checkpoint", "load_imagenet_weights", "predict"]  # for notebooks: from inference import ...


def read_labels(parser: argparse.ArgumentParser, name: str, num_classes: int) -> list[str]:
    """The class names of a --labels file, one a line, or parser.error saying what is wrong with it. A byte-order
    mark (Windows' Notepad writes one) is not part of the first name."""
    try:
        text = Path(name).read_text(encoding="utf-8-sig")
        labels = [line.strip() for line in text.splitlines() if line.strip()]
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with every default, and the examples above as they are written."""


def build_parser() -> argparse.ArgumentParser:
    """What a learner gives first (the images, the network, what to show), the operator's flags last."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "images", nargs="*", help="image files or directories of images (with --export: extra inputs for its check)"
    )
    network = parser.add_argument_group("the network")
    source = network.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint to use, or a FILE.onnx or FILE.pt2 that --export wrote (default: best.pt of the newest run "
        "in --runs-dir)",
    )
    source.add_argument(
        "--weights",
        default=None,
        choices=["imagenet"],
        help="instead of a checkpoint: torchvision's pretrained ImageNet AlexNet (IMAGENET1K_V1), "
        "downloaded once into $TORCH_HOME/hub/checkpoints/",
    )
    network.add_argument("--runs-dir", default="runs", help="where train.py writes its runs")
    network.add_argument(
        "--labels", default=None, help="text file with one class name per line, overriding the checkpoint's"
    )
    shown = parser.add_argument_group("what is shown and written")
    shown.add_argument("--topk", type=int, default=5, help="how many classes to show per image")
    shown.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation: none (centre crop), flip (it and its mirror) or 10crop (the paper's ten crops); "
        "softmax averaged",
    )
    shown.add_argument(
        "--plot",
        default=None,
        metavar="OUT.png",
        help="draw each image beside its top-k bar chart; with several image files, OUT-<index>.png per image",
    )
    shown.add_argument(
        "--output",
        default=None,
        metavar="FILE.csv|FILE.jsonl",
        help="also write one row per image to this file: its top-k classes and confidences, or why it was not read",
    )
    shown.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")
    operator = parser.add_argument_group("device, batches and export (operator)")
    operator.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    operator.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="model inputs per forward pass (an image is 2 with --tta flip, 10 with 10crop)",
    )
    operator.add_argument(
        "--export",
        default=None,
        metavar="FILE.onnx|FILE.pt2",
        help="write the network (of --checkpoint or --weights) as ONNX or torch.export's .pt2, checked against it, "
        "and classify nothing",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    model, meta = load_model(parser, args)
    if args.labels:  # the user's names replace the checkpoint's, ids and all
        meta["classes"], meta["ids"] = read_labels(parser, args.labels, len(meta["classes"])), None

    # A bad file is reported and skipped, the others still classified: a batch at a time, decoded, classified,
    # printed and drawn, then let go (500 photos of 12 MP held at once would take 18 GB).
    inputs = list_inputs(args.images)
    if args.export:  # the images (a few, as a rule) are inputs of the export's check, all at once
        decoded = list(decode_inputs(inputs, meta["preprocess"].in_channels, lambda image: image))
        good = [path for path, _, _, reason in decoded if reason is None]
        problems = [(position, str(name), reason) for position, (name, _, _, reason) in enumerate(decoded) if reason]
        export_network(Path(args.export), model, meta, [image for _, _, image, reason in decoded if reason is None])
        unwritten = 0
    else:
        good, results, problems, unwritten = classify_in_batches(args, model, meta, inputs)
        unwritten += write_output(Path(args.output), good, results, problems) if args.output else 0
    if problems:
        print(f"{len(problems)} of {len(problems) + len(good)} inputs could not be classified", file=sys.stderr)
    if problems or unwritten:
        sys.exit(1)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error for flags that cannot work together or files that cannot be written, before any work."""
    if args.topk < 1:
        parser.error("--topk must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if not args.images and not args.export:
        parser.error("give image files or directories to classify (or --export FILE to write the network)")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        parser.error(f"--plot {args.plot}: the picture is a PNG; give a file name ending in .png")
    if args.plot and not Path(args.plot).parent.is_dir():
        parser.error(f"--plot {args.plot}: no such directory {Path(args.plot).parent}")
    if args.output:
        try:
            result_format(Path(args.output))
        except ValueError as error:
            parser.error(f"--output {displayable(error)}")
        if not Path(args.output).parent.is_dir():
            parser.error(f"--output {args.output}: no such directory {Path(args.output).parent}")
    if args.export:
        if args.plot or args.output:
            parser.error("--export writes the network and classifies nothing: run --plot or --output without it")
        if args.checkpoint and Path(args.checkpoint).suffix.lower() in EXPORT_FORMATS:
            parser.error(f"--export: give a checkpoint (.pt) or --weights imagenet, not {args.checkpoint}")
        try:
            export_format(Path(args.export))
            check_writable(Path(args.export))
        except ExportError as error:
            parser.error(f"--export {displayable(error)}")


def load_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple:
    """(model, meta) of --weights, --checkpoint (a checkpoint or an exported file) or the newest run."""
    checkpoint = None
    if not args.weights:
        checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path(args.runs_dir))
        if checkpoint is None:
            parser.error(
                f"no checkpoint found in {args.runs_dir}/*/best.pt: train first (python train.py), "
                "pass --checkpoint, or use --weights imagenet"
            )
        if not checkpoint.exists():
            parser.error(f"--checkpoint {checkpoint}: no such file")
    try:
        device = pick_device(args.device)
    except ValueError as error:
        parser.error(f"--device {displayable(error)}")
    try:
        if checkpoint is None:
            return load_imagenet_weights(device)
        if checkpoint.suffix.lower() in EXPORT_FORMATS:
            return load_exported(checkpoint, device)
        return load_checkpoint(checkpoint, device)
    except (CheckpointError, ExportError) as error:
        # One line, not a traceback; a broken input (or no network) is not a usage error: status 1.
        print(f"error: {displayable(error)}", file=sys.stderr)
        sys.exit(1)


def export_network(path: Path, model: torch.nn.Module, meta: dict, images: list) -> None:
    """--export: write the network, checked against the model; the measured difference on stdout."""
    try:
        report = export_model(model, meta, path, images=images)
    except ExportError as error:
        print(f"error: --export {displayable(error)}", file=sys.stderr)
        sys.exit(1)
    print(
        f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB): its logits are within {report.max_difference:.2g} "
        f"of the checkpoint's (largest difference on random inputs {report.random_difference:.2g}, on images "
        f"{report.image_difference:.2g}; {report.inputs} inputs in batches of 1 and {PARITY_BATCH} or more)"
    )


def list_inputs(names: list[str]) -> list[tuple[str, list[Path]]]:
    """Each input with its image files: itself, a directory's (sorted), none for a URL or a directory without
    any. Listed before any is decoded: --plot numbers the pictures by the count of them all."""
    return [(name, [] if URL.match(name) else expand_inputs([name])) for name in names]


def decode_inputs(inputs: list[tuple[str, list[Path]]], channels: int, keep: Callable) -> Iterator[tuple]:
    """Each image file of `inputs` in order, decoded -> (its path, its index among all the image files,
    keep(image): what to hold of it, None), or (the input, its index or -1, None, why) for an input that
    failed, reported on stderr as it is met. The decoded image itself is let go at once."""
    index = 0
    for name, files in inputs:
        if not files:  # a URL, or a directory without a single image file
            reason = f"no image files ({' '.join(sorted(IMAGE_EXTENSIONS))}) in this directory"
            if URL.match(name):
                reason = "a URL: this reads files on disk; download it first (e.g. curl -O URL)"
            print(f"error: {printable(name)}: {reason}", file=sys.stderr)
            yield name, -1, None, reason
        for path in files:
            index += 1  # --plot numbers every image file, so that a bad one does not shift the others
            try:
                kept = keep(load_image(path, channels))
            except BadImageError as error:
                print(f"error: {printable(str(error))}", file=sys.stderr)
                yield path, index - 1, None, str(error).removeprefix(f"{path}: ")
                continue
            yield path, index - 1, kept, None


def classify_in_batches(args: argparse.Namespace, model: torch.nn.Module, meta: dict, inputs: list) -> tuple:
    """Decode, classify, print and draw (--plot) the inputs a batch at a time (predict's own batches: the same
    results as all at once) -> (the paths classified, their top-k, the inputs that failed as (position among all
    inputs, name, reason), how many pictures could not be written). Held at once: a batch's model inputs, and
    for --plot its images at the size drawn (picture_copy), never every decoded image."""
    preprocess, several = meta["preprocess"], sum(len(files) for _, files in inputs) > 1
    per_batch = max(1, args.batch_size // TTA_VIEWS[args.tta])

    def keep(image: torch.Tensor) -> tuple:
        return tta_transform(image, preprocess, args.tta), picture_copy(image) if args.plot else None

    good, results, problems, unwritten, batch = [], [], [], 0, []
    for position, (path, index, kept, reason) in enumerate(decode_inputs(inputs, preprocess.in_channels, keep)):
        if reason is not None:
            problems.append((position, str(path), reason))
        else:
            batch.append((path, index, *kept))
        if len(batch) == per_batch:
            unwritten += report_batch(args, model, meta, batch, several, good, results)
            batch = []
    if batch:
        unwritten += report_batch(args, model, meta, batch, several, good, results)
    return good, results, problems, unwritten


def report_batch(args: argparse.Namespace, model: torch.nn.Module, meta: dict, batch: list, several: bool,
                 good: list, results: list) -> int:  # fmt: skip
    """Classify a batch of (path, index, model input, picture), print its results and draw its pictures; the
    paths and results are added to `good` and `results` -> how many pictures could not be written."""
    paths = [path for path, _, _, _ in batch]
    top = predict(model, meta, [x for _, _, x, _ in batch], topk=args.topk, batch_size=args.batch_size, tta=args.tta)
    print_results(paths, top, args.json, class_ids(meta))
    good += paths
    results += top
    if not args.plot:
        return 0
    indices, pictures = [index for _, index, _, _ in batch], [picture for _, _, _, picture in batch]
    return draw_plots(Path(args.plot), paths, indices, pictures, top, several)


PICTURE_SIDE = 1024  # plot_topk draws 1000 x 400 pixels, the image in under 400 of them: 2.5 times that


def picture_copy(image: torch.Tensor) -> torch.Tensor:
    """What --plot draws of an image: the image, or a copy at most PICTURE_SIDE pixels on its longer side
    (a 12 MP photo: 3 MB rather than 36, and the same picture)."""
    height, width = image.shape[-2:]
    scale = PICTURE_SIDE / max(height, width)
    if scale >= 1:
        return image
    return TF.resize(image, [max(1, round(height * scale)), max(1, round(width * scale))], antialias=True)


def write_output(out: Path, paths: list[Path], results: list, problems: list) -> int:
    """--output: one row per input, in the order given -> 1 if the file could not be written, else 0."""
    rows = [ResultRow(str(path), predictions=top) for path, top in zip(paths, results)]
    for position, name, reason in problems:  # in increasing position: each lands where it was met
        rows.insert(position, ResultRow(name, error=reason))
    try:
        write_results(out, rows)
    except OSError as error:
        print(write_failure("--output", out, error, "it"), file=sys.stderr)
        return 1
    return 0


def write_failure(flag: str, target: Path, error: OSError, what: str) -> str:
    """The one line for a file that `flag` names and that could not be written."""
    if isinstance(error, DiskFullError):
        return f"error: {flag} {displayable(error)}"  # the file, what was written and what is free
    return f"error: {flag} {target}: cannot write {what} ({displayable(error.strerror or error)}); choose another path"


def class_ids(meta: dict) -> dict[str, str]:
    """{printed name: class id} where the names are not the ids (ImageNet: "Samoyed": "n02111889")."""
    ids = meta.get("ids")
    return dict(zip(meta["classes"], ids)) if ids else {}


def print_results(paths: list[Path], results: list, as_json: bool, ids: dict[str, str] | None = None) -> None:
    """Each image's top-k: the class name people read, with its id (ImageNet's WordNet id) where there is one.
    Names come from folders and files we did not write: the text shows them printable (a terminal escape or a
    newline as its escape, not run nor starting a forged line); JSON escapes them itself (json.dumps: ASCII)."""
    ids = ids or {}
    for path, top in zip(paths, results):
        if as_json:
            predictions = [{"class": c, **({"id": ids[c]} if c in ids else {}), "probability": p} for c, p in top]
            print(json.dumps({"image": str(path), "predictions": predictions}))
        else:
            print(f"{printable(str(path))}:")
            for name, probability in top:
                shown = name in ids and ids[name] not in name  # not twice: "crane (n03126707)" says it already
                print(f"  {100 * probability:6.2f}%  {printable(name)}{f' ({printable(ids[name])})' if shown else ''}")


def draw_plots(out: Path, paths: list[Path], indices: list[int], images: list, results: list, several: bool) -> int:
    """--plot: each image beside its top-k chart -> how many pictures could not be written."""
    from plots import plot_topk  # imported here: matplotlib only when a picture is asked for

    unwritten = 0
    for path, index, image, top in zip(paths, indices, images, results):
        target = plot_path(out, index, several)
        try:
            plot_topk(image, top, target, title=path.name)
        except OSError as error:  # e.g. a directory of that name, a folder we cannot write to, a full disk
            print(write_failure("--plot", target, error, "the picture"), file=sys.stderr)
            unwritten += 1
        except Exception as error:  # matplotlib refusing what it was given: one line, not a traceback
            reason = f"{type(error).__name__}: {printable(first_sentence(str(error)))}"
            print(f"error: --plot {printable(str(target))}: cannot draw the picture ({reason})", file=sys.stderr)
            unwritten += 1
    return unwritten


if __name__ == "__main__":
    main()
