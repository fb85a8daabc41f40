"""The pictures: training curves, conv1 filters, predictions, confusion matrices and top-k bars, as PNG files.

Shared by train.py (curves, filters, predictions, confusion, neighbours) and inference.py (top-k bars):

    >>> from plots import plot_curves, plot_filters
    >>> plot_curves([json.loads(line) for line in open("runs/shapes/metrics.jsonl")], Path("curves.png"))
    >>> plot_filters(model.features[0].weight, Path("filters.png"), groups=model.config["groups"])

Each function writes one PNG and returns nothing. Figures are drawn with matplotlib's object API
(`matplotlib.figure.Figure`, saved through the Agg canvas) rather than pyplot: nothing global
changes, no backend is switched (a notebook keeps its own) and no figure is left open. Sizes are
fixed (a figure size in inches times DPI), so a picture's size in pixels is known in advance:
see each function.

Class names (and the file names inference titles its pictures with) come from folders and files we
did not write: every text is drawn as it is written (`plain_text`: no math text, no LaTeX, whatever
the user's matplotlibrc says), and names are shown through `label` (display_text.printable, shortened).
A name such as `$5_to_$10` is drawn as those nine characters.
"""

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from atomic_files import write_atomically
from display_text import printable
from errors import library_warnings_off

DPI = 100
CURVES_SIZE = (15.0, 4.5)  # inches: 1500 x 450 pixels
FILTERS_SIZE = (9.0, 6.5)  # 900 x 650
PREDICTION_CELL = (2.0, 2.4)  # per image, the extra 0.4 inch for the title
PREDICTIONS_PER_ROW = 8
CONFUSION_SIZE = (8.0, 8.0)  # 800 x 800
MAX_CONFUSION_CLASSES = 30  # beyond that, names and counts no longer fit in a readable picture
TOPK_SIZE = (10.0, 4.0)  # 1000 x 400
NEIGHBOUR_CELL = (1.6, 1.9)  # per image, the extra 0.3 inch for the title
RIGHT, WRONG = "tab:green", "tab:red"
MAX_LABEL = 32  # characters of a name drawn: a longer one would push the confusion matrix or its neighbours aside


# matplotlib before 3.9 calls pyparsing by its old names, and pyparsing 3.3 warns of each (a UserWarning, seen
# with the floor's matplotlib 3.7) as matplotlib is imported and as it first draws text: not ours, and nothing
# a user can act on.
LIBRARY_WARNINGS = (r"'\w+' deprecated - use '\w+'",)
# A character the font has no glyph for (a CJK class name with matplotlib's DejaVu Sans) is drawn as a box, and
# matplotlib warns once per character on two lines: the name is printed whole by the scripts, the box is enough.
GLYPH_MISSING = r"Glyph \d+ .* missing from"
# Whatever a matplotlibrc asks: a "$" in a class name is not math text, and no text goes to LaTeX ("50%_off" and
# our own "accuracy (%)" would not compile; without LaTeX installed, every picture would fail).
PLAIN_TEXT = {"text.usetex": False, "text.parse_math": False, "axes.formatter.use_mathtext": False}


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Figures made and drawn meanwhile show every text as it is written (see PLAIN_TEXT), without the
    library's warnings (LIBRARY_WARNINGS, GLYPH_MISSING)."""
    with library_warnings_off(*LIBRARY_WARNINGS, GLYPH_MISSING):
        import matplotlib  # imported here: importing plots costs nothing

        with matplotlib.rc_context(PLAIN_TEXT):
            yield


def drawn_as_text(plot: Callable) -> Callable:
    """`plot` run within plain_text: matplotlib reads rcParams as it makes each text, tick labels at drawing."""

    @functools.wraps(plot)
    def plot_in_plain_text(*args, **kwargs) -> None:
        with plain_text():
            plot(*args, **kwargs)

    return plot_in_plain_text


def label(name: object, limit: int = MAX_LABEL) -> str:
    """A class or file name as drawn: printable (escapes for controls, newlines and bytes that were not UTF-8,
    which no font can draw and which matplotlib cannot even encode), at most `limit` characters (a longer one
    ends with an ellipsis)."""
    text = printable(str(name))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def new_figure(size: tuple[float, float]):
    """A matplotlib Figure of `size` inches at DPI, outside pyplot (see the module docstring)."""
    with library_warnings_off(*LIBRARY_WARNINGS):
        from matplotlib.figure import Figure  # imported here: importing plots costs nothing

    return Figure(figsize=size, dpi=DPI)


def save(figure, path: Path) -> None:
    """Write `figure` to `path` as a PNG of exactly figsize x DPI pixels, atomically: a full disk leaves the
    previous picture (curves.png is redrawn every epoch) whole, and is one DiskFullError naming the file.

    No bbox_inches="tight": it would trim the margins and make the size depend on the contents.
    """
    with library_warnings_off(*LIBRARY_WARNINGS):
        write_atomically(Path(path), lambda file: figure.savefig(file, dpi=DPI, format="png"))


def hide_axes(ax) -> None:
    """No frame, ticks or tick labels around an image. The empty tick lists save time: matplotlib lays out the
    ticks of an axes turned off all the same, for each title (neighbours.png, 35 images: 2.1 s -> 1.5 s)."""
    ax.set(xticks=[], yticks=[])
    ax.axis("off")


def to_display(image: torch.Tensor) -> tuple[np.ndarray, dict]:
    """(C, H, W) uint8 -> an (H, W, 3) or (H, W) array and the imshow options that show it unchanged."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) uint8 image, got {tuple(image.shape)} {image.dtype}")
    array = image.detach().cpu().numpy()
    if array.shape[0] == 3:
        return array.transpose(1, 2, 0), {}
    # One channel (or an odd count): grey levels, 0 black and 255 white, not matplotlib's auto-scaled colour map.
    return array[0], {"cmap": "gray", "vmin": 0, "vmax": 255}


@drawn_as_text
def plot_curves(metrics: list[dict], path: Path) -> None:
    """Loss, top-1 and top-5 accuracy against epoch, train and validation: three panels, 1500 x 450 pixels.

    `metrics` are train.py's metrics.jsonl rows (epoch, train_loss, train_top1, train_top5,
    val_loss, val_top1, val_top5, and ema_val_* for the weights' moving average with --ema). A
    series is drawn at the epochs whose rows have it, so rows of older runs without train_top5
    simply leave that line out.
    """
    figure = new_figure(CURVES_SIZE)
    ax_loss, ax_top1, ax_top5 = figure.subplots(1, 3)
    panels = [
        (ax_loss, "loss", "cross-entropy loss", "Loss"),
        (ax_top1, "top1", "accuracy (%)", "Top-1 accuracy"),
        (ax_top5, "top5", "accuracy (%)", "Top-5 accuracy"),
    ]
    for ax, metric, ylabel, title in panels:
        for split, name, style in (("train", "train", "o-"), ("val", "validation", "s-"), ("ema_val", "EMA", "^--")):
            key = f"{split}_{metric}"
            rows = [m for m in metrics if m.get(key) is not None]
            if not rows:
                continue
            scale = 1 if metric == "loss" else 100
            ax.plot([m["epoch"] for m in rows], [scale * m[key] for m in rows], style, label=name, markersize=4)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        if metric != "loss":
            ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    figure.tight_layout()
    save(figure, path)


def filter_mosaic(weight: torch.Tensor, columns: int, groups: int = 1, gap: int = 4) -> np.ndarray:
    """The kernels of `weight` (N, C, k, k) tiled into one (H, W, 3) float array in [0, 1].

    Each kernel is min-max scaled on its own, as in the paper's Figure 3 (a kernel's contrast is
    what shows its pattern; a shared scale would leave most of them flat grey). A constant kernel
    is mid-grey. One-channel kernels are grey; other channel counts than 3 show their mean.
    Kernels are 1 pixel apart on a white background; with `groups` > 1 each group starts on a new
    row and `gap` extra white rows separate the groups (the paper's two GPUs).
    """
    kernels = weight.detach().float().cpu()
    count, channels, height, width = kernels.shape
    if channels != 3:
        kernels = kernels.mean(dim=1, keepdim=True).expand(count, 3, height, width)
    low = kernels.amin(dim=(1, 2, 3), keepdim=True)
    high = kernels.amax(dim=(1, 2, 3), keepdim=True)
    scaled = torch.where(high > low, (kernels - low) / (high - low).clamp_min(1e-12), torch.full_like(kernels, 0.5))
    per_group = math.ceil(count / groups)
    rows_per_group = math.ceil(per_group / columns)
    rows = groups * rows_per_group
    mosaic = np.ones((rows * (height + 1) + 1 + (groups - 1) * gap, columns * (width + 1) + 1, 3), dtype=np.float32)
    for index in range(count):
        group, within = divmod(index, per_group)
        row = group * rows_per_group + within // columns
        top = 1 + row * (height + 1) + group * gap
        left = 1 + (within % columns) * (width + 1)
        mosaic[top : top + height, left : left + width] = scaled[index].permute(1, 2, 0).numpy()
    return mosaic


@drawn_as_text
def plot_filters(weight: torch.Tensor, path: Path, groups: int = 1) -> None:
    """The first convolution's kernels as a grid, like the paper's Figure 3: 900 x 650 pixels.

    `weight` is conv1's (N, C, k, k) weight, e.g. `model.features[0].weight` (96, 3, 11, 11);
    RGB kernels are shown in colour, one-channel (MNIST) kernels in grey, each min-max scaled on
    its own. 96 kernels make 8 rows of 12. `groups`: the model's config["groups"]; with 2 (the
    paper's two towers), the kernels feeding each tower (the first and second half) are drawn as
    two blocks with a gap between them, as the paper shows the kernels learned on each GPU.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a conv weight (N, C, k, k), got shape {tuple(weight.shape)}")
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the {weight.shape[0]} kernels")
    columns = 12 if weight.shape[0] % 12 == 0 and weight.shape[0] >= 48 else math.ceil(math.sqrt(weight.shape[0]))
    mosaic = filter_mosaic(weight, columns, groups)
    figure = new_figure(FILTERS_SIZE)
    ax = figure.subplots()
    ax.imshow(mosaic, interpolation="nearest")  # nearest: keep the kernels' pixels sharp, not blurred
    count, channels, height, width = weight.shape
    towers = f", {groups} towers" if groups > 1 else ""
    ax.set_title(f"conv1: {count} kernels of {height}x{width}x{channels}{towers}")
    hide_axes(ax)
    figure.tight_layout()
    save(figure, path)


@drawn_as_text
def plot_predictions(
    images: torch.Tensor,
    labels,
    predictions,
    classes: list[str],
    path: Path,
    probabilities=None,
) -> None:
    """A grid of images, each titled with its predicted class: green when right, red (with the
    true class) when wrong. 8 images a row; each image takes 200 x 240 pixels, so N images make
    a picture of min(N, 8) * 200 x ceil(N / 8) * 240 pixels.

    `images` (N, C, H, W) uint8 as decoded (not normalised); `labels` and `predictions` are N class
    indices (tensors or lists); `probabilities`, if given, N confidences of the predicted class.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    labels = torch.as_tensor(labels).tolist()
    predictions = torch.as_tensor(predictions).tolist()
    count = len(images)
    if not count or len(labels) != count or len(predictions) != count:
        raise ValueError(
            f"need as many labels and predictions as images (at least one): "
            f"{count} images, {len(labels)} labels, {len(predictions)} predictions"
        )
    confidences = torch.as_tensor(probabilities).tolist() if probabilities is not None else None
    columns = min(count, PREDICTIONS_PER_ROW)
    rows = math.ceil(count / columns)
    figure = new_figure((PREDICTION_CELL[0] * columns, PREDICTION_CELL[1] * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for index, ax in enumerate(axes):
        hide_axes(ax)
        if index >= count:
            continue
        array, options = to_display(images[index])
        ax.imshow(array, **options)
        true, predicted = labels[index], predictions[index]
        title = label(classes[predicted])
        if confidences is not None:
            title += f" {100 * confidences[index]:.0f}%"
        if predicted != true:
            title += f"\n(true: {label(classes[true])})"
        ax.set_title(title, color=RIGHT if predicted == true else WRONG, fontsize=9)
    figure.tight_layout()
    save(figure, path)


@drawn_as_text
def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path) -> None:
    """A confusion matrix with its counts: rows are the true classes, columns the predicted ones;
    800 x 800 pixels. Cells are shaded by their share of the row (the true class's images), so
    that a rare class's mistakes show as clearly as a common one's.

    `confusion` (K, K) integer counts with K <= 30 (more names do not fit: ValueError).
    """
    confusion = torch.as_tensor(confusion).detach().cpu()
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"expected a square (K, K) confusion matrix, got shape {tuple(confusion.shape)}")
    count = confusion.shape[0]
    if count > MAX_CONFUSION_CLASSES:
        raise ValueError(
            f"plot_confusion draws at most {MAX_CONFUSION_CLASSES} classes, got {count}: "
            "the class names and counts would not fit"
        )
    if len(classes) != count:
        raise ValueError(f"{len(classes)} class names for a {count} x {count} confusion matrix")
    counts = confusion.long().numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = new_figure(CONFUSION_SIZE)
    ax = figure.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fontsize = 10 if count <= 10 else 7 if count <= 20 else 5
    for true in range(count):
        for predicted in range(count):
            if counts[true, predicted]:
                colour = "white" if shares[true, predicted] > 0.5 else "black"  # readable on dark and light cells
                ax.text(
                    predicted,
                    true,
                    str(counts[true, predicted]),
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=fontsize,
                )
    names = [label(name) for name in classes]
    ax.set_xticks(range(count), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(count), names, fontsize=fontsize)
    total = counts.sum()
    accuracy = f", accuracy {100 * np.trace(counts) / total:.1f}%" if total else ""
    ax.set(xlabel="predicted class", ylabel="true class", title=f"Confusion matrix ({total} images{accuracy})")
    figure.tight_layout()
    save(figure, path)


@drawn_as_text
def plot_topk(image: torch.Tensor, topk: list[tuple[str, float]], path: Path, title: str | None = None) -> None:
    """An image beside a horizontal bar chart of its top-k (class name, probability) pairs, best
    at the top: 1000 x 400 pixels. `image` (C, H, W) uint8; `title` over the image (e.g. its file name).
    """
    if not topk:
        raise ValueError("topk is empty: nothing to plot")
    figure = new_figure(TOPK_SIZE)
    ax_image, ax_bars = figure.subplots(1, 2, width_ratios=[1, 1.4])
    array, options = to_display(image)
    ax_image.imshow(array, **options)
    hide_axes(ax_image)
    if title:
        ax_image.set_title(label(title, 48), fontsize=10)  # a file name: the image is wider than a cell
    names = [label(name) for name, _ in topk]
    values = [100 * probability for _, probability in topk]
    positions = range(len(topk))
    ax_bars.barh(positions, values, color=["tab:blue"] + ["tab:gray"] * (len(topk) - 1))
    ax_bars.set_yticks(positions, names)
    ax_bars.invert_yaxis()  # best first, at the top
    for position, value in zip(positions, values):
        inside = value > 85  # a long bar leaves no room after it: write inside its end
        ax_bars.text(
            value - 1 if inside else value + 1,
            position,
            f"{value:.1f}%",
            va="center",
            fontsize=9,
            ha="right" if inside else "left",
            color="white" if inside else "black",
        )
    ax_bars.set(xlim=(0, 100), xlabel="confidence (%)", title=f"Top-{len(topk)} predictions")
    ax_bars.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    save(figure, path)


@drawn_as_text
def plot_neighbours(
    queries: torch.Tensor,
    query_labels,
    neighbours: torch.Tensor,
    neighbour_labels,
    classes: list[str],
    path: Path,
) -> None:
    """The paper's Figure 4 (right): one row per query image, the query in the first column and its
    nearest training images beside it (neighbours.nearest_training_images), each titled with its
    class: green when it is the query's class, red when not. Q queries with K neighbours each make a
    picture of (K + 1) * 160 x Q * 190 pixels.

    `queries` (Q, C, H, W) and `neighbours` (Q, K, C, H, W) uint8 as decoded; `query_labels` Q and
    `neighbour_labels` (Q, K) class indices (tensors or lists).
    """
    if queries.ndim != 4 or neighbours.ndim != 5 or len(neighbours) != len(queries) or not len(queries):
        raise ValueError(
            f"expected queries (Q, C, H, W) and neighbours (Q, K, C, H, W), Q >= 1, got shapes "
            f"{tuple(queries.shape)} and {tuple(neighbours.shape)}"
        )
    query_labels, neighbour_labels = torch.as_tensor(query_labels).tolist(), torch.as_tensor(neighbour_labels).tolist()
    rows, columns = len(queries), neighbours.shape[1] + 1
    figure = new_figure((NEIGHBOUR_CELL[0] * columns, NEIGHBOUR_CELL[1] * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        images = [queries[row], *neighbours[row]]
        labels = [query_labels[row], *neighbour_labels[row]]
        for column, (ax, image, shown) in enumerate(zip(axes[row], images, labels)):
            array, options = to_display(image)
            ax.imshow(array, **options)
            hide_axes(ax)
            if column == 0:
                ax.set_title(f"query: {label(classes[shown])}", fontsize=9, fontweight="bold")
            else:
                ax.set_title(label(classes[shown]), fontsize=9, color=RIGHT if shown == query_labels[row] else WRONG)
    figure.tight_layout()
    save(figure, path)
