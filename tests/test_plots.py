"""plots.py: every picture is a PNG of the size its docstring promises, from tiny inputs; bad inputs are refused.

CPU only, no model training: the inputs are small random tensors (seeded by conftest).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, png_size
from PIL import Image

import plots
from alexnet import AlexNet


def random_images(count: int, channels: int = 3, size: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8)


@pytest.mark.slow
def test_importing_plots_does_not_import_matplotlib() -> None:
    """train.py and inference.py import plots at no cost; matplotlib loads when a picture is drawn."""
    import subprocess
    import sys

    code = "import sys, plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_plot_curves(tmp_path: Path) -> None:
    rows = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_top1": 0.2 * e,
            "train_top5": 0.3 * e,
            "val_loss": 2.1 / e,
            "val_top1": 0.18 * e,
            "val_top5": 0.28 * e,
        }
        for e in (1, 2, 3)
    ]
    path = tmp_path / "curves.png"
    plots.plot_curves(rows, path)
    assert png_size(path) == (1500, 450)


def test_plot_curves_without_train_top5(tmp_path: Path) -> None:
    """Runs from before train_top5 existed (and a run resumed across the change) still plot."""
    old = [{"epoch": 1, "train_loss": 2.0, "train_top1": 0.2, "val_loss": 2.1, "val_top1": 0.2, "val_top5": 0.5}]
    new = [
        {
            "epoch": 2,
            "train_loss": 1.5,
            "train_top1": 0.4,
            "train_top5": 0.8,
            "val_loss": 1.6,
            "val_top1": 0.4,
            "val_top5": 0.7,
        }
    ]
    plots.plot_curves(old, tmp_path / "old.png")
    plots.plot_curves(old + new, tmp_path / "mixed.png")
    assert png_size(tmp_path / "old.png") == png_size(tmp_path / "mixed.png") == (1500, 450)


@pytest.mark.parametrize("shape", [(96, 3, 11, 11), (96, 1, 11, 11), (64, 3, 11, 11)])
def test_plot_filters(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "filters.png"
    plots.plot_filters(torch.randn(shape), path)
    assert png_size(path) == (900, 650)


def test_plot_filters_of_a_two_tower_model(tmp_path: Path) -> None:
    model = AlexNet.paper(num_classes=3)  # groups=2
    path = tmp_path / "filters.png"
    plots.plot_filters(model.features[0].weight, path, groups=model.config["groups"])
    assert png_size(path) == (900, 650)


def test_filter_mosaic_layout() -> None:
    """96 kernels: 8 rows of 12, each scaled to [0, 1] on its own; two towers are 4 rows each with a gap."""
    weight = torch.randn(96, 3, 11, 11)
    weight[5] = 7.0  # a constant kernel: mid-grey, not a division by zero
    mosaic = plots.filter_mosaic(weight, columns=12)
    assert mosaic.shape == (8 * 12 + 1, 12 * 12 + 1, 3)
    assert mosaic.min() == 0.0 and mosaic.max() == 1.0 and np.isfinite(mosaic).all()
    first = mosaic[1:12, 1:12]  # kernel 0, top-left
    assert first.min() == 0.0 and first.max() == 1.0
    np.testing.assert_allclose(
        first, ((weight[0] - weight[0].min()) / (weight[0].max() - weight[0].min())).permute(1, 2, 0).numpy(), atol=1e-6
    )
    assert (mosaic[1:12, 5 * 12 + 1 : 5 * 12 + 12] == 0.5).all()  # kernel 5
    towers = plots.filter_mosaic(weight, columns=12, groups=2, gap=4)
    assert towers.shape == (8 * 12 + 1 + 4, 12 * 12 + 1, 3)
    assert (towers[4 * 12 : 4 * 12 + 5] == 1.0).all()  # white rows between the towers
    np.testing.assert_array_equal(towers[4 * 12 + 5 :], mosaic[4 * 12 + 1 :])  # kernels 48-95 below the gap


def test_plot_filters_rejects_what_is_not_a_conv_weight(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="conv weight"):
        plots.plot_filters(torch.randn(96, 11, 11), tmp_path / "x.png")
    with pytest.raises(ValueError, match="does not divide"):
        plots.plot_filters(torch.randn(95, 3, 11, 11), tmp_path / "x.png", groups=2)


@pytest.mark.parametrize("count, channels, size", [(5, 3, (1000, 240)), (11, 1, (1600, 480))])
def test_plot_predictions(tmp_path: Path, count: int, channels: int, size: tuple[int, int]) -> None:
    classes = ["cat", "dog", "ant"]
    labels = torch.randint(0, 3, (count,))
    predictions = labels.clone()
    predictions[::2] = (predictions[::2] + 1) % 3  # some right, some wrong
    path = tmp_path / "predictions.png"
    plots.plot_predictions(
        random_images(count, channels), labels, predictions.tolist(), classes, path, probabilities=torch.rand(count)
    )
    assert png_size(path) == size
    plots.plot_predictions(random_images(count, channels), labels, predictions, classes, path)  # without probabilities
    assert png_size(path) == size


def test_plot_predictions_rejects_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="as many labels and predictions"):
        plots.plot_predictions(random_images(3), [0, 1], [0, 1, 1], ["a", "b"], tmp_path / "x.png")


@pytest.mark.parametrize("classes", [3, 20])
def test_plot_confusion(tmp_path: Path, classes: int) -> None:
    confusion = torch.randint(0, 50, (classes, classes))
    confusion[0] = 0  # a class with no images: no division by zero
    path = tmp_path / "confusion.png"
    plots.plot_confusion(confusion, [f"class {i}" for i in range(classes)], path)
    assert png_size(path) == (800, 800)


def test_plot_confusion_rejects_too_many_classes_and_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 30 classes"):
        plots.plot_confusion(torch.zeros(31, 31, dtype=torch.long), [str(i) for i in range(31)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="square"):
        plots.plot_confusion(torch.zeros(3, 4, dtype=torch.long), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 class names"):
        plots.plot_confusion(torch.zeros(3, 3, dtype=torch.long), ["a", "b"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("channels", [3, 1])
def test_plot_topk(tmp_path: Path, channels: int) -> None:
    path = tmp_path / "topk.png"
    top = [("golden retriever", 0.93), ("Labrador retriever", 0.04), ("tennis ball", 0.02)]
    plots.plot_topk(random_images(1, channels, 40)[0], top, path, title="dog.jpg")
    assert png_size(path) == (1000, 400)


def test_plot_topk_rejects_a_batch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\) uint8"):
        plots.plot_topk(random_images(2), [("a", 1.0)], tmp_path / "x.png")


def pixels_near(path: Path, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels of a PNG are within `tolerance` of a colour on every channel."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(array - np.array(rgb)).max(axis=2) <= tolerance).sum())


def test_plot_predictions_titles_right_in_green_and_wrong_in_red(tmp_path: Path) -> None:
    green, red = (44, 160, 44), (214, 39, 40)  # matplotlib's tab:green and tab:red
    grey = torch.full((4, 3, 24, 24), 128, dtype=torch.uint8)  # images with neither colour
    plots.plot_predictions(grey, [0, 1, 0, 1], [0, 1, 0, 1], ["cat", "dog"], tmp_path / "right.png")
    plots.plot_predictions(grey, [0, 1, 0, 1], [1, 0, 1, 0], ["cat", "dog"], tmp_path / "wrong.png")
    assert pixels_near(tmp_path / "right.png", green) > 20 and pixels_near(tmp_path / "right.png", red) == 0
    assert pixels_near(tmp_path / "wrong.png", red) > 20 and pixels_near(tmp_path / "wrong.png", green) == 0


def test_plot_confusion_shades_each_cell_by_its_share_of_the_row(tmp_path: Path) -> None:
    """A class with 1 image and one with 1000, both always right: both diagonal cells are darkest."""
    darkest = (8, 48, 107)  # the top of matplotlib's Blues colour map
    plots.plot_confusion(torch.tensor([[1, 0], [0, 1000]]), ["rare", "common"], tmp_path / "both.png")
    plots.plot_confusion(torch.tensor([[0, 0], [0, 1000]]), ["rare", "common"], tmp_path / "one.png")
    both, one = pixels_near(tmp_path / "both.png", darkest), pixels_near(tmp_path / "one.png", darkest)
    assert one > 10_000 and both == pytest.approx(2 * one, rel=0.05)
