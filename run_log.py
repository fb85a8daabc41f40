"""What a run reports besides its checkpoints: metrics.jsonl, the curves, TensorBoard, progress, samples.

Every epoch's row goes through `log_epoch`, the one place to add another sink. metrics.jsonl is
rewritten atomically each epoch (a temporary file, fsynced, renamed), so a crash never leaves a
torn line; `read_metrics` still skips one left by older versions, with a note.
"""

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from tqdm import tqdm

from atomic_files import write_atomically
from display_text import printable
from plots import plot_curves


def read_metrics(path: Path, before_epoch: int) -> list[dict]:
    """The rows of a metrics.jsonl for the epochs before `before_epoch` (the checkpoint is the truth:
    later rows are dropped); a line that is not JSON (cut off by a crash) is skipped with a note."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"note: {path}: ignoring line {number}, which is not complete JSON (cut off by a crash?)")
    return [row for row in rows if isinstance(row, dict) and row.get("epoch", before_epoch) < before_epoch]


def write_metrics(path: Path, rows: list[dict]) -> None:
    """All rows, one JSON object a line, written atomically: a crash cannot tear a line."""
    write_atomically(path, lambda f: f.writelines((json.dumps(row) + "\n").encode() for row in rows))


def check_tensorboard() -> None:
    """ImportError (one line, saying what to install) when TensorBoard scalars cannot be written."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (it needs the tensorboard package)
    except ImportError:
        raise ImportError("the tensorboard package is not installed; pip install tensorboard") from None


def tensorboard_writer(run_dir: Path):
    """A TensorBoard SummaryWriter logging into run_dir (event files beside metrics.jsonl)."""
    from torch.utils.tensorboard import SummaryWriter  # imported here: only --tensorboard needs it

    return SummaryWriter(log_dir=str(run_dir))


def log_epoch(run_dir: Path, metrics: list[dict], row: dict, writer=None, curves: bool = True) -> None:
    """Record one epoch's row: metrics.jsonl, curves.png (unless `curves` is False) and, with a writer,
    TensorBoard scalars."""
    metrics.append(row)
    write_metrics(run_dir / "metrics.jsonl", metrics)
    if curves:
        plot_curves(metrics, run_dir / "curves.png")
    if writer is not None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
        writer.flush()


@dataclass
class ChanceWatch:
    """Whether the training loss has sat at chance, ln(number of classes), the loss of a network that
    predicts every class alike, for `patience` steps in a row (within `tolerance`, relative):
    AlexNet's best-known failure (a bad initialisation or learning rate). Fed at each host sync
    with the mean loss of the steps since the previous one."""

    patience: int = 300
    tolerance: float = 0.03
    steps: int = 0  # steps in a row at chance so far
    warned: bool = False
    warned_high: bool = False  # the other failure: a loss far above chance (diverging)

    def update(self, mean_loss: float, steps: int, num_classes: int) -> bool:
        """True once: the first time the loss has been at chance for `patience` steps."""
        chance = math.log(num_classes)
        self.steps = self.steps + steps if abs(mean_loss - chance) <= self.tolerance * chance else 0
        if self.steps >= self.patience and not self.warned:
            self.warned = True
            return True
        return False

    def far_above(self, mean_loss: float, num_classes: int, factor: float = 10.0) -> bool:
        """True once: the first time the loss is `factor` times chance or more. A network that has
        learned nothing scores chance; one far above it is being pushed away by too large steps."""
        if mean_loss >= factor * math.log(num_classes) and not self.warned_high:
            self.warned_high = True
            return True
        return False


def progress_bar(total: int, start: int, interactive: bool) -> tqdm:
    """A progress bar on a terminal; `show_progress` prints plain lines instead when it is disabled."""
    return tqdm(total=total, initial=start, disable=not interactive, leave=False, dynamic_ncols=True, file=sys.stdout)


def show_progress(bar: tqdm, step: int, loss: float, top1: float, seconds: float) -> None:
    text = f"loss {loss:.3f}  top-1 {100 * top1:5.1f}%  {seconds:.0f}s"
    if bar.disable:
        print(f"  step {step}/{bar.total}  {text}", flush=True)
    else:
        bar.update(step - bar.n)
        bar.set_postfix_str(text)


def sample_indices(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over `total` (validation sets are often sorted by class)."""
    return torch.linspace(0, total - 1, min(count, total)).long().tolist()


# A sample's file name, in UTF-8 bytes: far below the 255 that file systems allow, so that the temporary name
# it is written under (atomic_files: ".<pid>.tmp" added) fits too, and the whole path stays short to type.
MAX_SAMPLE_NAME = 200


def sample_file_name(index: int, name: str) -> str:
    """`NN_<class>.png` for the `index`-th sample: the class name printable (no control, newline or byte that
    was not UTF-8), with no path separator or space, cut to fit MAX_SAMPLE_NAME bytes; the index keeps
    two samples whose long names begin alike apart."""
    text = printable(name)
    for separator in {"/", " ", os.sep, os.altsep or "/"}:
        text = text.replace(separator, "_")
    prefix, suffix = f"{index:02d}_", ".png"
    while len((prefix + text + suffix).encode("utf-8")) > MAX_SAMPLE_NAME:
        text = text[:-1]
    return prefix + text + suffix


def save_samples(images: torch.Tensor, labels: torch.Tensor, classes: list[str], folder: Path, count: int = 8) -> None:
    """A few validation images as PNG files named after their class (sample_file_name), for the inference demo."""
    folder.mkdir(exist_ok=True)
    for i, index in enumerate(sample_indices(count, len(labels))):
        image = TF.to_pil_image(images[index].cpu())
        path = folder / sample_file_name(i, classes[int(labels[index])])
        write_atomically(path, lambda file, image=image: image.save(file, format="PNG"))
