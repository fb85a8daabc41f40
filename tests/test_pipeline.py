"""The fast data pipeline (data_pipeline.py): same pixels as torchvision's transforms, seeded
randomness, the decoded-image cache, mixed precision, and bench.py on tiny data."""

import functools
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from helpers import devices, fill_the_disk_at, run
from PIL import Image

import data_pipeline
import folders
from alexnet import AlexNet
from data_pipeline import DataConfig, load_data, make_presets
from engine import bf16_is_fast
from errors import DataError
from folders import decode_for_store
from presets import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    crop_boxes,
    crops_by_grid,
    crops_on_cpu,
    eval_transform,
    normalize,
    pca_lighting_stats,
    train_transform,
)
from speedups import fast_forward

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's: a different shift per channel


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def write_folder(
    root: Path, per_class: int = 6, size: tuple[int, int] = (40, 30), classes: tuple[str, ...] = ("cat", "dog")
) -> Path:
    """An ImageNet-layout folder of small RGB PNGs and JPEGs with class-dependent colours."""
    generator = torch.Generator().manual_seed(1)
    for split in ("train", "val"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
                pixels[..., label] = 255
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def folder_data(root: Path, tmp_path: Path, **overrides) -> tuple:
    """load_data on an image folder -> (train, val, classes, preprocess, augment)."""
    options = dict(data=str(root), data_root=str(tmp_path / "data"), image_size=67, loader="memory", workers=0)
    data = load_data(DataConfig(batch_size=4, **{**options, **overrides}), torch.device("cpu"))
    return data.train, data.val, data.classes, data.preprocess, data.augment


def preset(augment: str, dataset: str, store_size: int, image_size: int, mean: list, std: list, lighting: float = 0.0):
    """The training preset load_data makes for `dataset` ("folder": an image folder) stored at `store_size`."""
    where = {"data": "folder"} if dataset == "folder" else {"dataset": dataset}
    config = DataConfig(augment=augment, lighting=lighting, normalization=(mean, std), image_size=image_size, **where)
    images = torch.zeros(1, 3, store_size, store_size, dtype=torch.uint8)
    return make_presets(config, images)[1]


# --- Same pixels as the reference transforms ---------------------------------------------------


def test_decoding_equals_torchvision_resize_and_centre_crop(tmp_path: Path) -> None:
    image = Image.fromarray(random_images(1, 90)[0, :, :, :70].permute(1, 2, 0).numpy())  # 70 wide, 90 high
    image.save(tmp_path / "a.png")
    reference = T.Compose([T.Resize(48), T.CenterCrop(48), T.PILToTensor()])(image)
    assert torch.equal(decode_for_store(tmp_path / "a.png", 3, 48), reference)


def test_large_jpegs_are_decoded_at_reduced_scale_and_stay_close(tmp_path: Path) -> None:
    """DCT-domain downscaling (draft) of a JPEG 8x too large differs little from a full decode."""
    x = torch.linspace(0, 1, 512)
    smooth = torch.stack([x[None, :].expand(512, 512), x[:, None].expand(512, 512), (x[None, :] * x[:, None])], dim=-1)
    Image.fromarray((255 * smooth).byte().numpy()).save(tmp_path / "big.jpg", quality=95)
    with Image.open(tmp_path / "big.jpg") as image:
        reference = T.Compose([T.Resize(64), T.CenterCrop(64), T.PILToTensor()])(image.convert("RGB"))
    fast = decode_for_store(tmp_path / "big.jpg", 3, 64)
    assert fast.shape == reference.shape
    assert (fast.float() - reference.float()).abs().mean() < 2.0  # out of 255


@pytest.mark.parametrize("pad, crop, size", [(4, 32, 67), (0, 24, 24), (0, 20, 67)])
def test_cpu_crops_equal_torchvision_crop_flip_resize(pad: int, crop: int, size: int) -> None:
    images = random_images(6, 32)
    boxes = torch.tensor([[-pad, -pad, crop, crop], [0, 0, crop, crop], [32 - crop + pad, 1, crop, crop]] * 2)
    flips = torch.tensor([False, True, False, True, True, False])
    out = crops_on_cpu(images, boxes, flips, size, pad)
    for i in range(6):
        left, top, w, h = boxes[i].tolist()
        reference = TF.crop(F.pad(images[i], [pad] * 4), top + pad, left + pad, h, w)
        reference = TF.horizontal_flip(reference) if flips[i] else reference
        reference = TF.resize(reference, [size, size], antialias=True)
        assert torch.equal(out[i], reference), i


def test_resized_crops_equal_torchvision_resized_crop() -> None:
    images = random_images(3, 40)
    boxes = torch.tensor([[3, 5, 20, 30], [0, 0, 40, 40], [10, 2, 7, 9]])
    out = crops_on_cpu(images, boxes, torch.tensor([False, False, True]), 67, 0)
    for i, (left, top, w, h) in enumerate(boxes.tolist()):
        reference = TF.resized_crop(images[i], top, left, h, w, [67, 67], antialias=True)
        reference = TF.horizontal_flip(reference) if i == 2 else reference
        assert torch.equal(out[i], reference), i


@pytest.mark.parametrize("device", devices())
def test_gpu_grid_path_equals_the_cpu_path(device: str) -> None:
    """The grid path (what a GPU runs) on each device against the CPU path: whole-pixel crops of the
    output size are exact copies (padding and flips included); upscaled crops agree away from the
    crop's border (bilinear rounding)."""
    images = random_images(4, 32)
    boxes = torch.tensor([[-4, -4, 32, 32], [4, 0, 32, 32], [2, 3, 32, 32], [0, 0, 32, 32]])
    flips = torch.tensor([True, False, True, False])
    grid = crops_by_grid(images.to(device), boxes, flips, 32, "zeros").cpu()
    torch.testing.assert_close(grid, crops_on_cpu(images, boxes, flips, 32, 4).float(), atol=1e-3, rtol=0)
    boxes = torch.tensor([[2, 3, 16, 16], [0, 0, 32, 32], [10, 4, 20, 20], [5, 5, 8, 8]])
    grid = crops_by_grid(images.to(device), boxes, flips, 64, "border").cpu()
    cpu = crops_on_cpu(images, boxes, flips, 64, 0).float()
    torch.testing.assert_close(grid[..., 8:-8, 8:-8], cpu[..., 8:-8, 8:-8], atol=1.0, rtol=0)  # uint8 rounding


def test_normalize_equals_torchvision_normalize() -> None:
    images = random_images(2, 16)
    reference = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), MEAN, STD)
    torch.testing.assert_close(normalize(images, MEAN, STD), reference)


def test_in_memory_validation_equals_torchvision_eval_transforms(tmp_path: Path) -> None:
    """Validation batches from the decoded folder, through eval_transform, are the reference
    Resize(round(S*256/224)) + CenterCrop(S) + ToTensor + Normalize of each file, to rounding."""
    # 127 x 100 resizes to 97 x 77: whole-pixel centre offsets both ways (a half-pixel offset would
    # round differently when cropping 77 then 67 than when cropping 67 at once).
    root = write_folder(tmp_path / "folder", size=(127, 100))
    _, val, classes, preprocess, _ = folder_data(root, tmp_path, image_size=67)
    assert preprocess.resize_size == 77
    reference_tf = T.Compose(
        [T.Resize(77), T.CenterCrop(67), T.ToTensor(), T.Normalize(preprocess.mean, preprocess.std)]
    )
    files = sorted((root / "val" / "cat").iterdir()) + sorted((root / "val" / "dog").iterdir())
    images, labels = next(val.batches())
    ours = eval_transform(images, preprocess)
    for i in range(len(labels)):
        with Image.open(files[i]) as image:
            reference = reference_tf(image.convert("RGB"))
        difference = (ours[i] - reference).abs() * torch.tensor(preprocess.std).view(3, 1, 1) * 255
        assert difference.max() <= 1.01, files[i]  # a uint8 rounding step at most


# --- Randomness: different every step, the same for a seed -------------------------------------


@pytest.mark.parametrize("augment", ["crop", "resized-crop"])
def test_augmentation_is_random_across_steps_and_reproducible(augment: str) -> None:
    images = random_images(16, 32)
    spec = preset(augment, "cifar10", 32, 67, MEAN, STD)
    generator = torch.Generator().manual_seed(5)
    first, second = train_transform(images, spec, generator), train_transform(images, spec, generator)
    assert first.shape == (16, 3, 67, 67)
    assert not torch.equal(first, second)
    again = train_transform(images, spec, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)


def test_resized_crop_boxes_follow_torchvision_ranges() -> None:
    spec = preset("resized-crop", "folder", 256, 224, MEAN, STD)
    boxes = crop_boxes(20000, 256, 256, spec, torch.Generator().manual_seed(0)).float()
    left, top, w, h = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all() and (left + w <= 256).all() and (top + h <= 256).all()
    area = w * h / 256**2
    assert 0.07 < area.min() and area.max() <= 1.0 and abs(area.mean().item() - 0.54) < 0.05  # ~ U(0.08, 1), clipped
    ratio = (w / h)[(w < 256) & (h < 256)]
    assert 0.7 < ratio.min() and ratio.max() < 1.45


def test_pad_and_crop_offsets_cover_the_padding() -> None:
    spec = preset("crop", "cifar10", 32, 67, MEAN, STD)
    assert spec.crop_padding == 4 and spec.crop_size == 32
    boxes = crop_boxes(5000, 32, 32, spec, torch.Generator().manual_seed(0))
    assert set(boxes[:, 0].tolist()) == set(range(-4, 5)) and set(boxes[:, 1].tolist()) == set(range(-4, 5))


def test_shuffling_is_a_permutation_fixed_by_the_seed() -> None:
    data = data_pipeline.InMemory(
        torch.arange(10).view(10, 1, 1, 1).byte(), torch.arange(10), 4, True, torch.device("cpu")
    )
    order = [labels.tolist() for _, labels in data.batches(seed=3)]
    assert len(order) == 2 and all(len(batch) == 4 for batch in order)  # the partial batch is dropped
    assert len(set(order[0] + order[1])) == 8
    assert order == [labels.tolist() for _, labels in data.batches(seed=3)]
    assert order != [labels.tolist() for _, labels in data.batches(seed=4)]


# --- The decoded-image cache ------------------------------------------------------------------


def test_cache_is_reused_and_invalidated_when_files_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_folder(tmp_path / "folder")
    cache = tmp_path / "data" / "cache"
    train, *_ = folder_data(root, tmp_path)
    assert len(list(cache.glob("folder-train-*.pt"))) == 1 and len(train) == 12

    calls = []
    real_decode = folders.decode_folder
    monkeypatch.setattr(folders, "decode_folder", lambda *args: calls.append(args) or real_decode(*args))
    again, *_ = folder_data(root, tmp_path)
    assert calls == [] and torch.equal(again.images, train.images)  # read from the cache

    changed = root / "train" / "cat" / "1.png"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(10**18, 10**18))  # a different modification time, whatever the clock
    updated, *_ = folder_data(root, tmp_path)
    assert len(calls) == 1 and not torch.equal(updated.images, train.images)
    assert len(list(cache.glob("folder-train-*.pt"))) == 1  # the stale cache is gone

    Image.new("RGB", (40, 30)).save(root / "train" / "dog" / "new.png")
    grown, *_ = folder_data(root, tmp_path)
    assert len(calls) == 2 and len(grown) == 13


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a file every write to fails")
def test_a_cache_that_finds_the_disk_full_is_a_warning_and_the_data_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = write_folder(tmp_path / "folder")
    fill_the_disk_at(monkeypatch, "folder-train-", 1)
    train, *_ = folder_data(root, tmp_path)
    assert len(train) == 12  # decoded, and trained on
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "folder-train-" in line]
    assert warning.startswith(f"warning: the cache {tmp_path / 'data' / 'cache'}/folder-train-") and "\n" not in warning
    assert ": no space left on the disk (" in warning and warning.endswith("writable cache_dir (train.py --cache-dir)")
    assert not list((tmp_path / "data" / "cache").glob("folder-train-*"))  # no cache, and no half of one


def test_the_cache_goes_where_cache_dir_says_or_beside_us_when_the_data_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = write_folder(tmp_path / "folder")
    folder_data(root, tmp_path, cache_dir=str(tmp_path / "fast"))
    assert len(list((tmp_path / "fast").glob("folder-train-*.pt"))) == 1 and not (tmp_path / "data").exists()
    # A data root that cannot be written (ImageNet on shared storage; as root every folder can be
    # written, so the operating system's answer is stood in for): data/cache under the working directory.
    shared = tmp_path / "shared"
    shared.mkdir()
    real_access = data_pipeline.os.access
    monkeypatch.setattr(data_pipeline.os, "access", lambda path, mode: Path(path) != shared and real_access(path, mode))
    monkeypatch.chdir(tmp_path)
    folder_data(root, tmp_path, data_root=str(shared))
    assert "note: " + str(shared) + " cannot be written (read-only data?)" in capsys.readouterr().out
    assert len(list((tmp_path / "data" / "cache").glob("folder-train-*.pt"))) == 1 and not list(shared.iterdir())


def test_damaged_cache_is_decoded_again(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "folder")
    train, *_ = folder_data(root, tmp_path)
    for path in (tmp_path / "data" / "cache").glob("*.pt"):
        path.write_bytes(b"not a tensor file")
    again, *_ = folder_data(root, tmp_path)
    assert torch.equal(again.images, train.images)


def test_streaming_gives_the_same_pixels_as_memory(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "folder", size=(50, 50))
    _, val_memory, *_ = folder_data(root, tmp_path)
    _, val_stream, *_ = folder_data(root, tmp_path, loader="stream")
    assert type(val_stream).__name__ == "Streaming"
    for (a, la), (b, lb) in zip(val_memory.batches(), val_stream.batches()):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_small_square_images_are_stored_at_their_own_size(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "folder", size=(32, 32))
    train, _, _, preprocess, spec = folder_data(root, tmp_path, image_size=67)
    assert train.images.shape[-1] == 32 and preprocess.resize_size == 67
    assert spec.kind == "crop" and spec.crop_padding == 4


# --- Precision and layout ------------------------------------------------------------------------


# Where the CPU has no bf16 units (AVX2 only), bf16 autocast runs on emulated kernels, ~12x slower than fp32
# here (6 s a step): there the bf16 variants follow the reference for 3 steps, not 8.
BF16_STEPS = 8 if bf16_is_fast(torch.device("cpu")) else 3


def losses(amp: bool, memory_format: torch.memory_format, steps: int = 8) -> list[float]:
    """The loss of each of `steps` SGD steps on one batch, computed as train.py computes it (fast_forward: fc6
    folded through the pooling at 67 px), in bf16 autocast or not, in `memory_format`."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=5, dropout=0.0).to(memory_format=memory_format)
    forward = fast_forward(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0005, momentum=0.9)
    x = torch.randn(8, 3, 67, 67, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=memory_format)
    y = torch.arange(8) % 5
    trajectory = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trajectory.append(loss.item())
    return trajectory


@functools.cache
def fp32_losses() -> list[float]:
    """The reference: fp32, contiguous (computed once per process)."""
    return losses(False, torch.contiguous_format)


# One test per variant, so that `pytest -n 2` runs them side by side.
@pytest.mark.slow
@pytest.mark.parametrize(
    "amp, memory_format",
    [(False, torch.channels_last), (True, torch.contiguous_format), (True, torch.channels_last)],
    ids=["fp32-channels_last", "bf16", "bf16-channels_last"],
)
def test_bf16_and_channels_last_follow_the_fp32_loss_trajectory(amp: bool, memory_format: torch.memory_format) -> None:
    reference = fp32_losses()
    assert reference[-1] < reference[0] - 0.3  # it does learn
    trajectory = losses(amp, memory_format, BF16_STEPS if amp else len(reference))
    tolerance = 0.05 if amp else 1e-3
    assert all(math.isclose(a, b, rel_tol=tolerance) for a, b in zip(trajectory, reference[: len(trajectory)])), (
        amp,
        trajectory,
        reference,
    )


# --- bench.py -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_json_on_a_tiny_folder(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "folder", per_class=8)
    shape = ["--image-size", "67", "--batch-size", "4", "--warmup", "1", "--steps", "2", "--workers", "0"]
    result = run("bench.py", "--data", str(root), *shape, "--json", cwd=tmp_path)
    report = json.loads(result.stdout)
    assert report["ours_images_per_second"] > 0 and report["baseline_images_per_second"] > 0
    assert report["ratio"] == pytest.approx(report["ours_images_per_second"] / report["baseline_images_per_second"])
    assert (report["device"], report["image_size"], report["batch_size"]) == ("cpu", 67, 4)
    assert report["train_images"] == 16 and report["ours_peak_memory_mb"] > 0


# --- The paper's PCA lighting ---------------------------------------------------------------------


def test_pca_lighting_shifts_along_the_eigenvectors_with_the_papers_variance() -> None:
    """alpha ~ N(0, 0.1) per image: the RGB shift has mean zero and covariance
    P diag((0.1 l)^2) P^T, with column j of P paired with eigenvalue l_j."""
    spec = preset("none", "folder", 2, 2, [0.0] * 3, [1 / 255] * 3, lighting=0.1)  # output in 0-255 units
    images = torch.zeros(20000, 3, 2, 2, dtype=torch.uint8)  # black
    shift = (
        train_transform(images, spec, torch.Generator().manual_seed(0))[:, :, 0, 0] / 255
    )  # (N, 3), pixels in [0, 1]
    eigval, eigvec = torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC)
    assert shift.mean(0).abs().max() < 3 * 0.1 * eigval[0] / 20000**0.5 + 1e-4
    expected = eigvec @ torch.diag((0.1 * eigval) ** 2) @ eigvec.T
    torch.testing.assert_close(torch.cov(shift.T), expected, atol=2e-5, rtol=0.05)
    # In the eigenvector basis the components are uncorrelated, with std 0.1 x eigenvalue.
    components = shift @ eigvec  # (N, 3)
    torch.testing.assert_close(components.std(0), 0.1 * eigval, rtol=0.05, atol=1e-5)
    again = train_transform(images[:10], spec, torch.Generator().manual_seed(0))
    assert torch.equal(again, train_transform(images[:10], spec, torch.Generator().manual_seed(0)))


def test_pca_of_the_training_images_finds_their_colour_axis() -> None:
    """Pixels that vary only along one RGB direction: the first eigenvector is that direction."""
    direction = torch.tensor([0.6, 0.64, 0.48])  # unit length
    level = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    images = (255 * (0.2 + 0.5 * level * direction.view(1, 3, 1, 1))).round().byte()
    eigval, eigvec = pca_lighting_stats(images)
    assert eigval[0] > 100 * eigval[1] >= 0 and eigval == sorted(eigval, reverse=True)
    first = torch.tensor(eigvec)[:, 0]
    assert abs(abs(first @ direction) - 1) < 1e-3


def test_pca_in_chunks_equals_the_covariance_of_all_pixels_at_once() -> None:
    images = torch.randint(0, 256, (250, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:120, 0] //= 2  # unequal chunks of data: the mean differs between them
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255
    expected_val, expected_vec = torch.linalg.eigh(torch.cov(pixels))
    eigval, eigvec = pca_lighting_stats(images)
    torch.testing.assert_close(torch.tensor(eigval, dtype=torch.float64), expected_val.flip(0))
    # Eigenvectors are defined up to sign.
    torch.testing.assert_close(
        (torch.tensor(eigvec, dtype=torch.float64) * expected_vec.flip(1)).sum(0).abs(),
        torch.ones(3, dtype=torch.float64),
    )


@pytest.mark.slow
def test_bench_reports_a_bad_folder_in_one_line(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "folder")
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "val").rmdir()
    result = run("bench.py", "--data", str(root), "--image-size", "67", "--workers", "0", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    expected = f"--data {root}: no val/ folder; expected {root}/train/<class>/* and {root}/val/<class>/*"
    assert result.stderr.strip().splitlines() == [f"error: the ours run failed: {expected}"]


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_counts_exactly_and_keeps_the_models_mode(training: bool) -> None:
    from engine import evaluate

    torch.manual_seed(0)
    model = AlexNet(3, dropout=0.5).train(training)
    images, labels = torch.randn(10, 3, 67, 67), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    result = evaluate(model, [(images[:6], labels[:6]), (images[6:], labels[6:])], None, 3, 1)
    assert model.training == training
    with torch.no_grad():
        logits = model.eval()(images)
    assert result["top1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert result["confusion"].sum() == 10


def test_evaluate_averages_the_probabilities_of_ten_crops() -> None:
    from engine import evaluate

    torch.manual_seed(0)
    model = AlexNet(3).eval()
    crops, labels = torch.randn(4, 10, 3, 67, 67), torch.tensor([0, 1, 2, 1])
    result = evaluate(model, [(crops, labels)], None, 3, 1)
    with torch.no_grad():
        probabilities = (
            model(crops.flatten(0, 1)).softmax(1).view(4, 10, 3).mean(1)
        )  # the mean of the softmax, not of the logits
    assert result["loss"] == pytest.approx(-probabilities[torch.arange(4), labels].log().mean().item(), rel=1e-5)
    assert result["top1"] == pytest.approx((probabilities.argmax(1) == labels).float().mean().item())
    expected = torch.bincount(labels * 3 + probabilities.argmax(1), minlength=9).view(3, 3)
    assert torch.equal(result["confusion"], expected)


def test_auto_augmentation_follows_the_data() -> None:
    shapes = preset("auto", "shapes", 67, 67, MEAN, STD)  # whole shapes in fresh images: flips only
    assert shapes.kind == "none" and shapes.flip
    cifar = preset("auto", "cifar10", 32, 67, MEAN, STD)  # small images: pad 4 and crop
    assert cifar.kind == "crop" and cifar.crop_padding == 4 and cifar.flip
    assert preset("auto", "folder", 256, 224, MEAN, STD).kind == "resized-crop"  # photos
    assert not preset("auto", "mnist", 28, 67, [0.5], [0.25]).flip  # a mirrored digit is another glyph


def test_a_folder_of_one_class_is_refused(tmp_path: Path) -> None:
    """One class trains to 100% and then names that class for any image: refused, saying what to add."""
    for split in ("train", "val"):
        (tmp_path / split / "solo").mkdir(parents=True)
    with pytest.raises(DataError) as raised:
        folders.folder_classes(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path}/train has one class folder (solo); a classifier needs two or more: add a folder of images "
        "of another class"
    )
    (tmp_path / "train" / "duo").mkdir()
    (tmp_path / "val" / "duo").mkdir()
    assert folders.folder_classes(tmp_path) == ["duo", "solo"]
