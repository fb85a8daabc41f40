"""inference.py's flip and ten-crop testing, --tta and --plot, and torchvision's ImageNet weights (--weights imagenet).

CPU only and offline: a tiny-class AlexNet checkpoint for the crops and the command line; for the
ImageNet weights, torch's download function is replaced by one that fails, and the "cached" file
is a randomly initialised torchvision AlexNet written where torch.hub looks for the real one.
"""

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.error import HTTPError, URLError

import pytest
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from helpers import CHECKPOINT_CLASSES, CHECKPOINT_PRESET, fill_the_disk_at, png_size, run_cli
from PIL import Image

from alexnet import AlexNet
from engine import predict
from errors import CheckpointError, DownloadError
from image_files import load_image
from presets import IMAGENET_PRESET, EvalPreset, eval_transform, flip_transform, ten_crop_transform, tta_transform
from pretrained import imagenet_cache_path, imagenet_state_dict, load_imagenet_weights

CLASSES, PREPROCESS = CHECKPOINT_CLASSES, CHECKPOINT_PRESET
WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"  # the file name in torchvision's IMAGENET1K_V1 URL


def hand_cut_crops(image: torch.Tensor, preprocess: EvalPreset) -> torch.Tensor:
    """The paper's ten crops of one (C, H, W) uint8 image, cut one by one with TF.crop and TF.hflip."""
    side = min(image.shape[-2:])
    square = TF.resize(TF.center_crop(image, [side, side]), [preprocess.resize_size] * 2, antialias=True)
    size, margin = preprocess.image_size, preprocess.resize_size - preprocess.image_size
    corners = [(0, 0), (0, margin), (margin, 0), (margin, margin), (margin // 2, margin // 2)]  # (top, left)
    patches = [TF.crop(square, top, left, size, size) for top, left in corners]
    crops = torch.stack(patches + [TF.hflip(patch) for patch in patches])
    return TF.normalize(TF.to_dtype(crops, torch.float32, scale=True), preprocess.mean, preprocess.std)


# Ten-crop testing -----------------------------------------------------------------------------


def test_ten_crop_transform_is_the_papers_ten_crops() -> None:
    image = torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8)
    crops = ten_crop_transform(image, PREPROCESS)
    assert crops.shape == (10, 3, 67, 67) and crops.dtype == torch.float32
    torch.testing.assert_close(crops, hand_cut_crops(image, PREPROCESS), rtol=0, atol=0)
    torch.testing.assert_close(crops[4], eval_transform(image, PREPROCESS), rtol=0, atol=0)  # the centre crop


def test_ten_crop_transform_on_a_batch() -> None:
    """train.py's validation calls it on (B, C, H, W) batches: each image's crops as if alone."""
    batch = torch.randint(0, 256, (2, 1, 50, 80), dtype=torch.uint8)
    preprocess = replace(PREPROCESS, mean=[0.5], std=[0.25], in_channels=1)
    crops = ten_crop_transform(batch, preprocess)
    assert crops.shape == (2, 10, 1, 67, 67)
    for image, image_crops in zip(batch, crops):
        torch.testing.assert_close(image_crops, hand_cut_crops(image, preprocess), rtol=0, atol=0)


def test_predict_with_ten_crops_averages_their_softmax(loaded: tuple[AlexNet, dict]) -> None:
    model, meta = loaded
    images = [torch.randint(0, 256, (3, 80 + 10 * i, 75), dtype=torch.uint8) for i in range(3)]
    with torch.no_grad():
        expected = [model(hand_cut_crops(image, PREPROCESS)).softmax(dim=1).mean(dim=0) for image in images]
    for batch_size in (64, 10):  # all three images in one forward pass, and one image (10 crops) per pass
        results = predict(model, meta, images, topk=3, batch_size=batch_size, tta="10crop")
        for top, probabilities in zip(results, expected):
            assert [name for name, _ in top] == [CLASSES[i] for i in probabilities.argsort(descending=True)]
            torch.testing.assert_close(torch.tensor([p for _, p in top]), probabilities.sort(descending=True).values)


def test_predict_tta_none_is_the_centre_crop(loaded: tuple[AlexNet, dict]) -> None:
    model, meta = loaded
    image = torch.randint(0, 256, (3, 80, 90), dtype=torch.uint8)
    assert (
        predict(model, meta, [image], tta="none")
        == predict(model, meta, [image])
        == predict(model, meta, [image], tta=None)
    )
    preprocessed = ten_crop_transform(image, PREPROCESS)  # float inputs are taken as the crops themselves
    assert predict(model, meta, [preprocessed], tta="10crop") == predict(model, meta, [image], tta="10crop")
    with pytest.raises(ValueError, match="tta must be"):
        predict(model, meta, [image], tta="5crop")
    with pytest.raises(ValueError, match=r"\(10, C, S, S\) views"):
        predict(model, meta, [preprocessed[0]], tta="10crop")


# Flip testing ---------------------------------------------------------------------------------


def hand_mirrored(image: torch.Tensor, preprocess: EvalPreset) -> torch.Tensor:
    """The centre crop of one (C, H, W) uint8 image and its mirror, the mirror made column by column."""
    crop = eval_transform(image, preprocess)
    mirror = torch.stack([crop[..., -1 - column] for column in range(crop.shape[-1])], dim=-1)
    return torch.stack([crop, mirror])


def test_flip_transform_is_the_centre_crop_and_its_mirror() -> None:
    batch = torch.randint(0, 256, (2, 3, 90, 70), dtype=torch.uint8)
    views = flip_transform(batch, PREPROCESS)
    assert views.shape == (2, 2, 3, 67, 67) and views.dtype == torch.float32
    for image, image_views in zip(batch, views):
        torch.testing.assert_close(image_views, hand_mirrored(image, PREPROCESS), rtol=0, atol=0)
    assert not torch.equal(views[:, 0], views[:, 1])  # a random image is not its own mirror
    for tta, shape in [("none", (2, 3, 67, 67)), ("flip", (2, 2, 3, 67, 67)), ("10crop", (2, 10, 3, 67, 67))]:
        assert tta_transform(batch, PREPROCESS, tta).shape == shape


def test_predict_with_flips_averages_the_softmax_of_the_image_and_its_mirror(loaded: tuple[AlexNet, dict]) -> None:
    model, meta = loaded
    images = [torch.randint(0, 256, (3, 80 + 10 * i, 75), dtype=torch.uint8) for i in range(3)]
    with torch.no_grad():
        expected = [model(hand_mirrored(image, PREPROCESS)).softmax(dim=1).mean(dim=0) for image in images]
        plain = [model(eval_transform(image, PREPROCESS)[None]).softmax(dim=1)[0] for image in images]
    assert not any(torch.allclose(e, p) for e, p in zip(expected, plain))  # the mirror changes the answer
    for batch_size in (64, 2):  # all three images in one forward pass, and one image (2 views) per pass
        results = predict(model, meta, images, topk=3, batch_size=batch_size, tta="flip")
        for top, probabilities in zip(results, expected):
            assert [name for name, _ in top] == [CLASSES[i] for i in probabilities.argsort(descending=True)]
            torch.testing.assert_close(torch.tensor([p for _, p in top]), probabilities.sort(descending=True).values)
    with pytest.raises(ValueError, match=r"\(2, C, S, S\) views with tta='flip'"):
        predict(model, meta, [eval_transform(images[0], PREPROCESS)], tta="flip")


# The command line: --tta, --plot --------------------------------------------------------------


def write_images(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"image{i}.png"
        Image.fromarray(torch.randint(0, 256, (70 + 5 * i, 90, 3), dtype=torch.uint8).numpy()).save(path)
        paths.append(path)
    return paths


def test_cli_tta_10crop(
    tmp_path: Path, checkpoint_file: Path, loaded: tuple[AlexNet, dict], capsys: pytest.CaptureFixture
) -> None:
    (path,) = write_images(tmp_path, 1)
    status, out, _ = run_cli(
        capsys, str(path), "--checkpoint", str(checkpoint_file), "--tta", "10crop", "--json", "--topk", "3"
    )
    assert status == 0
    printed = json.loads(out)["predictions"]
    expected = predict(*loaded, [path], topk=3, tta="10crop")[0]
    assert [(p["class"], pytest.approx(p["probability"], abs=1e-6)) for p in printed] == expected
    assert run_cli(capsys, str(path), "--checkpoint", str(checkpoint_file), "--tta", "5crop")[0] == 2


def test_cli_plot_one_image(tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture) -> None:
    (path,) = write_images(tmp_path, 1)
    out = tmp_path / "top.png"
    status, stdout, _ = run_cli(
        capsys, str(path), "--checkpoint", str(checkpoint_file), "--topk", "2", "--plot", str(out)
    )
    assert status == 0 and stdout.splitlines()[0] == f"{path}:"
    assert png_size(out) == (1000, 400)
    assert sorted(p.name for p in tmp_path.glob("top*")) == ["top.png"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a file every write to fails")
def test_cli_plot_and_output_on_a_full_disk_are_one_line_each(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (path,) = write_images(tmp_path, 1)
    plot, output = tmp_path / "top.png", tmp_path / "r.csv"
    plot.write_bytes(b"an earlier picture")
    fill_the_disk_at(monkeypatch, "top.png", 1)
    fill_the_disk_at(monkeypatch, "r.csv", 1)
    flags = ["--checkpoint", str(checkpoint_file), "--plot", str(plot), "--output", str(output)]
    status, stdout, err = run_cli(capsys, str(path), *flags)
    assert status == 1 and stdout.splitlines()[0] == f"{path}:"  # classified and printed; only the files failed
    lines = err.splitlines()
    assert len(lines) == 2 and all(" no space left on the disk (" in line for line in lines), err
    assert lines[0].startswith(f"error: --plot {plot}: no space") and lines[1].startswith(f"error: --output {output}:")
    assert plot.read_bytes() == b"an earlier picture" and not output.exists() and not list(tmp_path.glob("*.tmp"))


def test_cli_plot_several_images_numbers_them(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture
) -> None:
    """OUT-<index>.png per image file in the order given; a bad file keeps its number but gets no picture."""
    first, second = write_images(tmp_path, 2)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "plots" / "top.png"
    out.parent.mkdir()
    status, stdout, stderr = run_cli(
        capsys,
        str(first),
        str(bad),
        str(second),
        "--checkpoint",
        str(checkpoint_file),
        "--tta",
        "10crop",
        "--plot",
        str(out),
    )
    assert status == 1 and "not an image" in stderr  # the bad file is reported, the others still classified and drawn
    assert stdout.count(":\n") == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["top-0.png", "top-2.png"]
    assert png_size(out.parent / "top-2.png") == (1000, 400)


def test_cli_plot_needs_a_png_name_in_an_existing_folder(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture
) -> None:
    (path,) = write_images(tmp_path, 1)
    status, _, err = run_cli(
        capsys, str(path), "--checkpoint", str(checkpoint_file), "--plot", str(tmp_path / "top.jpg")
    )
    assert status == 2 and "ending in .png" in err
    status, _, err = run_cli(
        capsys, str(path), "--checkpoint", str(checkpoint_file), "--plot", str(tmp_path / "no" / "top.png")
    )
    assert status == 2 and "no such directory" in err


def test_cli_plot_onto_a_directory_is_one_line_and_keeps_the_predictions(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture
) -> None:
    (path,) = write_images(tmp_path, 1)
    (tmp_path / "taken.png").mkdir()  # a directory where the picture should go
    status, out, err = run_cli(
        capsys, str(path), "--checkpoint", str(checkpoint_file), "--plot", str(tmp_path / "taken.png")
    )
    assert status == 1 and out.startswith(f"{path}:")  # classified and printed all the same
    assert (
        err.strip().startswith(f"error: --plot {tmp_path / 'taken.png'}: cannot write")
        and len(err.strip().splitlines()) == 1
    )


# torchvision's ImageNet weights, offline ------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """TORCH_HOME in a fresh folder, and torch.hub unable to reach the network: the URLs it tried."""
    tried = []

    def refuse(url, *args, **kwargs):
        tried.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)  # in case a torch version downloads some other way
    return tried


@pytest.fixture(scope="module")
def random_imagenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """torchvision's AlexNet with random weights, saved under the IMAGENET1K_V1 file name: (TORCH_HOME, state_dict)."""
    torch.manual_seed(0)
    state_dict = torchvision.models.alexnet(weights=None).state_dict()
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state_dict, home / "hub" / "checkpoints" / WEIGHTS_FILE)
    yield home, state_dict
    shutil.rmtree(home)


@pytest.mark.parametrize("failure", ["offline", "http"])
def test_imagenet_weights_offline_without_the_file(
    no_network: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture, failure: str
) -> None:
    cache = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    url = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"
    if failure == "http":

        def forbidden(url, *args, **kwargs):
            raise HTTPError(url, 403, "Forbidden", None, None)

        monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    assert imagenet_cache_path() == cache
    with pytest.raises(DownloadError) as caught:
        load_imagenet_weights(progress=False)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{cache}: ") and url in message
    assert ("HTTP Error 403" if failure == "http" else "Temporary failure in name resolution") in message
    assert not cache.exists()
    image = tmp_path / "x.png"
    Image.new("RGB", (80, 80), "red").save(image)
    status, out, err = run_cli(capsys, str(image), "--weights", "imagenet")
    assert status == 1 and out == ""  # nothing on stdout, not even torch.hub's "Downloading" line (stderr)
    assert err.splitlines()[-1] == f"error: {message}"
    if failure == "offline":
        assert no_network == [url, url]


def test_imagenet_weights_from_the_cache(
    random_imagenet_weights: tuple[Path, dict], no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, state_dict = random_imagenet_weights
    monkeypatch.setenv("TORCH_HOME", str(home))
    loaded = imagenet_state_dict(progress=False)
    assert loaded.keys() == state_dict.keys() and all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)
    model, meta = load_imagenet_weights(progress=False)
    assert no_network == []  # read from the cache, never downloaded
    assert not model.training and model.config["layout"] == "torchvision"
    assert len(meta["classes"]) == 1000 and meta["classes"][:2] == ["tench", "goldfish"]
    assert meta["preprocess"] == IMAGENET_PRESET
    reference = torchvision.models.alexnet(weights=None)
    reference.load_state_dict(state_dict)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x))


def test_cli_weights_imagenet(
    random_imagenet_weights: tuple[Path, dict],
    no_network: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    home, state_dict = random_imagenet_weights
    monkeypatch.setenv("TORCH_HOME", str(home))
    (image,) = write_images(tmp_path, 1)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"label {i}\n" for i in range(1000)))
    status, out, err = run_cli(capsys, str(image), "--weights", "imagenet", "--topk", "3", "--labels", str(labels))
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{image}:" and len(lines) == 4
    # The named classes and their probabilities are torchvision's model's, with these weights, on the same input.
    reference = torchvision.models.alexnet(weights=None)
    reference.load_state_dict(state_dict)
    with torch.no_grad():
        probabilities = reference.eval()(eval_transform(load_image(image, 3), IMAGENET_PRESET)[None]).softmax(1)[0]
    status, out, err = run_cli(
        capsys, str(image), "--weights", "imagenet", "--topk", "3", "--labels", str(labels), "--json"
    )
    predictions = json.loads(out)["predictions"]
    assert [line.split("%", 1)[1].strip() for line in lines[1:]] == [prediction["class"] for prediction in predictions]
    fourth = probabilities.topk(4).values[-1].item()
    for prediction in predictions:
        index = int(prediction["class"].removeprefix("label "))
        assert prediction["probability"] == pytest.approx(
            probabilities[index].item(), rel=1e-4
        )  # (random weights: all near 0.001)
        assert prediction["probability"] >= fourth * (1 - 1e-4)  # one of the reference's top 3


def test_cli_weights_and_checkpoint_together_is_a_usage_error(
    checkpoint_file: Path, capsys: pytest.CaptureFixture
) -> None:
    status, _, err = run_cli(capsys, "x.png", "--weights", "imagenet", "--checkpoint", str(checkpoint_file))
    assert status == 2 and "not allowed with argument" in err


def test_unusable_cached_weights_file(no_network: list[str], tmp_path: Path) -> None:
    """A cached file that is not these weights: a CheckpointError naming it, never a download over it."""
    cache = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"<html>proxy login page</html>")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as caught:
        imagenet_state_dict(progress=False)
    assert str(caught.value).startswith(f"{cache}: ") and not isinstance(caught.value, DownloadError)
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, cache)
    with pytest.raises(CheckpointError, match="weights do not match"):
        imagenet_state_dict(progress=False)
    assert no_network == []
