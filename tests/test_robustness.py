"""Bad inputs to inference.py: every unreadable image is a BadImageError, every unusable checkpoint a
CheckpointError, odd but valid images are read correctly, and the command line answers each bad file.

CPU only and fast: one tiny-class AlexNet checkpoint is written once for the whole module.
"""

import io
import os
import pickle
import shutil
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import checkpoints
import image_files
import inference
from alexnet import AlexNet
from checkpoints import load_checkpoint
from engine import predict
from errors import BadImageError, CheckpointError
from image_files import load_image
from presets import EvalPreset, eval_transform

CLASSES = ["a", "b", "c"]
PREPROCESS = {
    "image_size": 67,
    "resize_size": round(67 * 256 / 224),
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
    "in_channels": 3,
}


@pytest.fixture(scope="module")
def checkpoint_dict() -> dict:
    """The keys inference needs, in the format train.py's checkpoint() writes."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=len(CLASSES))
    return {
        "model": model.state_dict(),
        "model_config": model.config,
        "classes": CLASSES,
        "preprocess": PREPROCESS,
        "epoch": 1,
    }


@pytest.fixture(scope="module")
def checkpoint_file(checkpoint_dict: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("checkpoint") / "best.pt"
    torch.save(checkpoint_dict, path)
    yield path
    shutil.rmtree(path.parent)


@pytest.fixture(scope="module")
def loaded(checkpoint_file: Path) -> tuple[AlexNet, dict]:
    return load_checkpoint(checkpoint_file)


def bad_image_message(path: Path, channels: int = 3) -> str:
    """load_image's BadImageError message for `path`, checked to be one line naming the path."""
    with pytest.raises(BadImageError) as caught:
        load_image(path, channels)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def checkpoint_message(path: Path) -> str:
    """load_checkpoint's CheckpointError message for `path`, checked to be one line naming the path."""
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def halves(size: tuple[int, int], left: tuple, right: tuple, mode: str = "RGB") -> Image.Image:
    """An image whose left half is `left` and right half `right`: shows where pixels end up."""
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


# Unreadable images ----------------------------------------------------------------------------


def test_zero_byte_file_is_a_bad_image(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty file (0 bytes)" in bad_image_message(path)


def test_text_file_with_an_image_extension_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are notes, not pixels\n" * 10)
    assert "not an image" in bad_image_message(path)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_image_is_a_bad_image(tmp_path: Path, format: str) -> None:
    rng = np.random.default_rng(0)
    data = encoded(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), format)
    path = tmp_path / f"cut.{format.lower()}"
    path.write_bytes(data[: len(data) // 2])
    message = bad_image_message(path)
    assert "truncated" in message or "corrupt" in message


def test_corrupt_png_is_a_bad_image(tmp_path: Path) -> None:
    data = bytearray(encoded(Image.new("RGB", (32, 32), "red"), "PNG"))
    data[40:60] = bytes(20)  # inside IDAT: its checksum no longer matches
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    assert "corrupt" in bad_image_message(path)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels but holds none: all a decompression bomb needs to say."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "side", [30_000, 10_000]
)  # over twice PIL's limit (an error in PIL), and just over it (a warning)
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    import resource

    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(side, side))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    message = bad_image_message(path)
    assert "decompression bomb" in message and f"{side * side:,} pixels" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 500_000  # no 0.3-2.7 GB buffer


@pytest.mark.parametrize("side", [12, 20])
def test_pixel_limit_follows_pil_max_image_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert f"{side * side} pixels, over the limit of 100" in bad_image_message(path)


def test_missing_file_directory_and_pipe_are_bad_images(tmp_path: Path) -> None:
    assert "no such file" in bad_image_message(tmp_path / "missing.jpg")
    (tmp_path / "folder.png").mkdir()
    assert "is a directory" in bad_image_message(tmp_path / "folder.png")
    os.mkfifo(tmp_path / "pipe.png")  # opening it to read would block forever
    assert "not a regular file" in bad_image_message(tmp_path / "pipe.png")


def test_unreadable_file_is_a_bad_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(path)
    if os.geteuid() != 0:  # root reads any file, whatever its mode: simulate the refusal there
        path.chmod(0)
    else:

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(image_files.Image, "open", refuse)
    assert "permission denied" in bad_image_message(path)


def test_eps_is_never_handed_to_ghostscript(tmp_path: Path) -> None:
    path = tmp_path / "drawing.jpg"
    path.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    )
    with Image.open(path) as image:
        assert image.format == "EPS"  # PIL alone would take it for EPS, and load() would run Ghostscript
    assert "not an image" in bad_image_message(path)


# Odd but valid images ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, format", [("<u2", "PNG"), (">u2", "TIFF")])
def test_16_bit_grayscale_keeps_its_top_8_bits(tmp_path: Path, dtype: str, format: str) -> None:
    values = [0, 255, 256, 32767, 32768, 65280, 65535]
    path = tmp_path / f"deep.{format.lower()}"
    Image.fromarray(np.array([values], dtype=dtype)).save(path, format)
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I;16B")  # really 16-bit on disk (I;16B: big-endian TIFF)
    pixels = load_image(path, 1)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 1, len(values))
    assert pixels[0, 0].tolist() == [0, 0, 1, 127, 128, 255, 255]
    assert load_image(path, 3)[:, 0, -1].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 8), (255, 0, 0, 0)).save(path, quality=95)  # pure cyan ink
    with Image.open(path) as image:
        assert image.mode == "CMYK"
    pixels = load_image(path, 3)
    assert pixels.shape == (3, 8, 16)
    red, green, blue = pixels[:, 4, 8].tolist()
    assert red < 10 and green > 245 and blue > 245


@pytest.mark.parametrize("format", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(tmp_path: Path, format: str) -> None:
    image = halves((20, 10), 0, 1, mode="P")
    image.putpalette([200, 0, 0, 0, 160, 0] + [0] * 762)  # index 0 red (to be transparent), 1 green
    path = tmp_path / f"sticker.{format.lower()}"
    image.save(path, format, transparency=0)
    pixels = load_image(path, 3)
    assert pixels[:, 5, 2].tolist() == [255, 255, 255]
    assert pixels[:, 5, 17].tolist() == [0, 160, 0]


@pytest.mark.parametrize("mode, channels", [("RGBA", 3), ("RGBA", 1), ("LA", 3), ("LA", 1)])
def test_alpha_is_composited_onto_white(tmp_path: Path, mode: str, channels: int) -> None:
    opaque_black, clear_black = (0,) * (len(mode) - 1) + (255,), (0,) * len(mode)
    path = tmp_path / "alpha.png"
    halves((20, 10), clear_black, opaque_black, mode=mode).save(path)
    pixels = load_image(path, channels)
    assert pixels.shape == (channels, 10, 20)
    assert pixels[:, 5, 2].tolist() == [255] * channels and pixels[:, 5, 17].tolist() == [0] * channels


def test_exif_rotated_jpeg_is_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show the image rotated 90 degrees clockwise
    path = tmp_path / "portrait.jpg"
    halves((40, 20), (255, 0, 0), (0, 0, 255)).save(path, exif=exif.tobytes(), quality=95)
    pixels = load_image(path, 3)
    assert pixels.shape == (3, 40, 20)  # (C, H, W): stored 40 wide and 20 high, shown 20 wide and 40 high
    assert pixels[0, 5, 10] > 200 and pixels[2, 5, 10] < 50  # the left (red) half is now on top
    assert pixels[2, 35, 10] > 200 and pixels[0, 35, 10] < 50


def test_one_pixel_image_is_classified(tmp_path: Path, loaded: tuple[AlexNet, dict]) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 200, 30)).save(path)
    assert load_image(path, 3).shape == (3, 1, 1)
    [top] = predict(*loaded, [path], topk=3)
    assert sorted(name for name, _ in top) == CLASSES and sum(p for _, p in top) == pytest.approx(1, abs=1e-5)


def test_grayscale_gives_three_equal_channels_and_colour_gives_luminance(tmp_path: Path) -> None:
    Image.new("L", (6, 4), 77).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png", 3).tolist() == torch.full((3, 4, 6), 77, dtype=torch.uint8).tolist()
    Image.new("RGB", (6, 4), (255, 0, 0)).save(tmp_path / "red.png")
    assert load_image(tmp_path / "red.png", 1).unique().tolist() == [76]  # ITU-R 601 luma: 0.299 * 255


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (12, 12), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "blink.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as image:
        assert image.n_frames == 3
    assert load_image(path, 3)[:, 6, 6].tolist() == [255, 0, 0]


# Checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_round_trip(loaded: tuple[AlexNet, dict], checkpoint_dict: dict) -> None:
    model, meta = loaded
    assert not model.training and meta == {"classes": CLASSES, "preprocess": EvalPreset(**PREPROCESS)}
    assert torch.equal(model.state_dict()["classifier.6.weight"], checkpoint_dict["model"]["classifier.6.weight"])


def test_a_checkpoint_of_one_class_is_refused(tmp_path: Path) -> None:
    """Written before train.py refused one-class folders: it said `100.00% solo` for any image."""
    model = AlexNet(num_classes=1)
    path = tmp_path / "best.pt"
    checkpoint = {"model": model.state_dict(), "model_config": model.config, "classes": ["solo"]}
    torch.save({**checkpoint, "preprocess": PREPROCESS}, path)
    message = checkpoint_message(path)
    assert message == f"{path}: has one class (solo), so it names it for any image; train it on two or more classes"


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file (0 bytes)"),
        (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a PyTorch checkpoint"),
        (b"model weights go here\n", "not a PyTorch checkpoint"),
    ],
    ids=["zero-bytes", "random-bytes", "text"],
)
def test_file_that_is_not_a_checkpoint(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    assert reason in checkpoint_message(path)


def test_missing_checkpoint_and_directory(tmp_path: Path) -> None:
    assert "no such file" in checkpoint_message(tmp_path / "missing.pt")
    assert "is a directory" in checkpoint_message(tmp_path)


def test_truncated_checkpoint(tmp_path: Path, checkpoint_file: Path) -> None:
    path = tmp_path / "cut.pt"
    with open(checkpoint_file, "rb") as file:
        path.write_bytes(file.read(1 << 20))  # the first MiB of a ~220 MB file: a copy cut short
    assert "truncated or corrupt" in checkpoint_message(path)
    legacy = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(100)}}, legacy, _use_new_zipfile_serialization=False)  # a bare pickle stream
    path.write_bytes(legacy.getvalue()[:200])
    assert "truncated or corrupt" in checkpoint_message(path)


class CreatesFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a hostile pickle could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (str(self.path), "w")


def hostile_checkpoint(how: str, marker: Path) -> bytes:
    """A file that runs CreatesFile(marker) when fully unpickled, written in one of the ways torch.load accepts."""
    payload = CreatesFile(marker)
    if how.startswith("pickle-protocol-"):
        return pickle.dumps(payload, protocol=int(how.rsplit("-", 1)[1]))
    buffer = io.BytesIO()
    checkpoint = {
        "model": {"features.0.weight": torch.zeros(1)},
        "model_config": payload,
        "classes": CLASSES,
        "preprocess": PREPROCESS,
    }
    torch.save(checkpoint, buffer, _use_new_zipfile_serialization=how == "torch-save")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "how", ["pickle-protocol-2", f"pickle-protocol-{pickle.DEFAULT_PROTOCOL}", "torch-save", "torch-save-legacy"]
)
def test_code_executing_pickle_is_refused_unrun(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "was-run"
    path = tmp_path / "best.pt"
    path.write_bytes(hostile_checkpoint(how, marker))
    message = checkpoint_message(path)
    assert "refused as unsafe" in message and "not loaded" in message
    assert not marker.exists()
    # The payload is live: an ordinary, trusting load would have run it.
    if how.startswith("pickle"):
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_dict_without_the_expected_keys(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"features.0.weight": torch.zeros(96, 3, 11, 11)}, path)
    message = checkpoint_message(path)
    assert "no model, model_config, classes, preprocess" in message and "bare model.state_dict()" in message
    torch.save({"model": {}, "model_config": {}, "preprocess": PREPROCESS}, path)
    assert checkpoint_message(path).endswith("not a train.py checkpoint: no classes")
    torch.save(["not", "a", "dict"], path)
    assert "it holds a list" in checkpoint_message(path)


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    grey = {"features.0.weight": torch.zeros(96, 1, 11, 11)}  # conv1 of a 1-channel model
    torch.save(
        {
            "model": grey,
            "model_config": {"num_classes": 3, "in_channels": 3},
            "classes": CLASSES,
            "preprocess": PREPROCESS,
        },
        path,
    )
    message = checkpoint_message(path)
    assert "features.0.weight has shape (96, 1, 11, 11) in the file but (96, 3, 11, 11)" in message
    assert "and 15 more differences" in message  # the 15 other weights are missing


def test_config_with_more_classes_than_the_weights(monkeypatch: pytest.MonkeyPatch, checkpoint_dict: dict) -> None:
    """The realistic mismatch: a model_config edited or copied from another run. No 220 MB file needed."""
    wrong = {
        **checkpoint_dict,
        "model_config": {**checkpoint_dict["model_config"], "num_classes": 4},
        "classes": CLASSES + ["d"],
    }
    monkeypatch.setattr(checkpoints, "read_checkpoint", lambda path: wrong)
    message = checkpoint_message(Path("edited.pt"))
    assert message.endswith(
        "classifier.6.weight has shape (3, 4096) in the file but (4, 4096) in the model its model_config "
        "describes (and 1 more difference)"
    )  # classifier.6.bias


def test_config_that_is_not_an_alexnet_and_non_finite_weights(
    monkeypatch: pytest.MonkeyPatch, checkpoint_dict: dict
) -> None:
    unknown = {**checkpoint_dict, "model_config": {**checkpoint_dict["model_config"], "width": 2}}
    monkeypatch.setattr(checkpoints, "read_checkpoint", lambda path: unknown)
    assert "does not describe an AlexNet (TypeError" in checkpoint_message(Path("odd.pt"))
    weights = dict(checkpoint_dict["model"])
    weights["features.3.bias"] = weights["features.3.bias"].clone().fill_(float("nan"))
    monkeypatch.setattr(checkpoints, "read_checkpoint", lambda path: {**checkpoint_dict, "model": weights})
    assert "weight features.3.bias holds NaN or infinite values" in checkpoint_message(Path("diverged.pt"))


# The command line ------------------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """inference.main() in this process (no second torch import): exit status, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["inference.py", *args])
    with pytest.raises(SystemExit) as caught:
        inference.main()
        sys.exit(0)
    captured = capsys.readouterr()
    return caught.value.code, captured.out, captured.err


def test_cli_classifies_good_files_and_reports_each_bad_one(
    tmp_path: Path, checkpoint_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    good = [tmp_path / "one.png", tmp_path / "two.jpg"]
    Image.new("RGB", (90, 70), "orange").save(good[0])
    Image.new("L", (50, 80), 30).save(good[1])
    bad = {
        tmp_path / "empty.jpg": "empty file",
        tmp_path / "notes.jpg": "not an image",
        tmp_path / "cut.png": "truncated",
        tmp_path / "missing.png": "no such file",
        tmp_path / "nothing": "no image files",
        "https://example.com/x.jpg": "a URL: this reads files on disk; download it first",
    }
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("hello")
    (tmp_path / "cut.png").write_bytes(encoded(Image.effect_noise((64, 64), 50), "PNG")[:2000])
    (tmp_path / "nothing").mkdir()
    inputs = [good[0], *bad, good[1]]
    status, out, err = run_cli(
        monkeypatch, capsys, *map(str, inputs), "--checkpoint", str(checkpoint_file), "--topk", "2"
    )
    assert status == 1
    lines = out.splitlines()  # per good image: "PATH:" and its top 2 classes, in the order given
    assert len(lines) == 6 and lines[0] == f"{good[0]}:" and lines[3] == f"{good[1]}:"
    errors = err.splitlines()
    for path, reason in bad.items():
        assert any(line.startswith(f"error: {path}: ") and reason in line for line in errors), (path, err)
    assert errors[-1] == "6 of 8 inputs could not be classified" and len(errors) == 7


@pytest.mark.parametrize("how", ["torch-save", "text"])
def test_cli_answers_a_bad_checkpoint_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, how: str
) -> None:
    Image.new("RGB", (80, 80)).save(tmp_path / "x.png")
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(hostile_checkpoint(how, tmp_path / "was-run") if how != "text" else b"not a checkpoint")
    status, out, err = run_cli(monkeypatch, capsys, str(tmp_path / "x.png"), "--checkpoint", str(checkpoint))
    assert status == 1 and out == ""
    assert err.startswith(f"error: {checkpoint}: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "was-run").exists()


def test_cli_missing_checkpoint_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    status, out, err = run_cli(monkeypatch, capsys, "x.png", "--checkpoint", str(tmp_path / "gone.pt"))
    assert status == 2 and f"--checkpoint {tmp_path / 'gone.pt'}: no such file" in err


def test_cli_bad_device_and_unreadable_labels_are_usage_errors(
    tmp_path: Path, checkpoint_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    status, _, err = run_cli(monkeypatch, capsys, "x.png", "--checkpoint", str(checkpoint_file), "--device", "gpu")
    assert status == 2 and "--device gpu: unknown device" in err
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xff\xfe\x00binary")
    status, _, err = run_cli(
        monkeypatch, capsys, "x.png", "--checkpoint", str(checkpoint_file), "--labels", str(labels)
    )
    assert status == 2 and f"--labels {labels}: cannot read it as UTF-8 text" in err


# Property: whatever the file, a probability vector or a BadImageError ------------------------------

# The modes each PIL writer accepts (others fail in the writer, which is not what is tested here).
# "PT" is a palette image with a transparent colour.
WRITABLE_MODES = {
    "PNG": ["1", "L", "LA", "P", "PT", "RGB", "RGBA", "I;16"],
    "JPEG": ["1", "L", "RGB", "CMYK"],
    "GIF": ["1", "L", "P", "PT", "RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB", "RGBA"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"],
    "WEBP": ["L", "RGB", "RGBA", "PT"],
}
MAGIC = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
]


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 1 << 16, shape, dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(1 << 20), 1 << 20, shape, dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.normal(128, 100, shape).astype(np.float32))
    image = Image.fromarray(rng.integers(0, 256, (*shape, 4), dtype=np.uint8), "RGBA")
    if mode == "PT":
        image = image.convert("P")
        image.info["transparency"] = int(rng.integers(0, 256))
        return image
    return image.convert(mode)


@st.composite
def valid_image_files(draw: st.DrawFn) -> bytes:
    format = draw(st.sampled_from(sorted(WRITABLE_MODES)))
    mode = draw(st.sampled_from(WRITABLE_MODES[format]))
    image = random_image(mode, draw(st.integers(1, 300)), draw(st.integers(1, 300)), draw(st.integers(0, 2**16)))
    options = {"transparency": image.info["transparency"]} if mode == "PT" and format in ("PNG", "GIF") else {}
    return encoded(image, format, **options)


@st.composite
def image_file_contents(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(file content, whether it must load): a valid image, a truncated one, or random bytes behind a magic number."""
    kind = draw(st.sampled_from(["valid", "truncated", "random"]))
    if kind == "random":
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=2000)), False
    data = draw(valid_image_files())
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))], False
    return data, True


@pytest.fixture(scope="module")
def scratch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property") / "image.img"


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's notes on corrupt TIFF tags and EXIF data, expected here
@settings(max_examples=100, deadline=None, derandomize=True)
@given(case=image_file_contents(), channels=st.sampled_from([1, 3]))
def test_any_file_gives_probabilities_or_bad_image_error(
    case: tuple[bytes, bool], channels: int, scratch_file: Path
) -> None:
    data, must_load = case
    scratch_file.write_bytes(data)
    try:
        pixels = load_image(scratch_file, channels)
    except BadImageError:
        assert not must_load, "a valid image was refused"
        return
    assert pixels.dtype == torch.uint8 and pixels.ndim == 3 and pixels.shape[0] == channels
    model = tiny_model(channels)
    preprocess = EvalPreset(
        **{**PREPROCESS, "mean": [0.5] * channels, "std": [0.25] * channels, "in_channels": channels}
    )
    with torch.no_grad():
        probabilities = model(eval_transform(pixels, preprocess)[None]).softmax(dim=1)
    assert probabilities.shape == (1, len(CLASSES)) and torch.isfinite(probabilities).all()
    assert probabilities.sum().item() == pytest.approx(1, abs=1e-5)


MODELS: dict[int, AlexNet] = {}


def tiny_model(channels: int) -> AlexNet:
    """One eval-mode model per channel count, built once: building AlexNet takes longer than the test."""
    if channels not in MODELS:
        torch.manual_seed(0)
        MODELS[channels] = AlexNet(num_classes=len(CLASSES), in_channels=channels).eval()
    return MODELS[channels]


def test_flipped_bytes_in_a_checkpoints_tensors_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """torch.load reads damaged tensor data without a word; the checksum save_checkpoint stores catches it."""
    from alexnet import AlexNet
    from checkpoints import read_checked_checkpoint, save_checkpoint
    from errors import CheckpointError

    torch.manual_seed(0)
    model = AlexNet(3)
    preprocess = {"image_size": 67, "resize_size": 67, "mean": [0.5] * 3, "std": [0.25] * 3, "in_channels": 3}
    state = {"model": model.state_dict(), "model_config": model.config, "classes": ["a", "b", "c"],
             "preprocess": preprocess, "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}}}  # fmt: skip
    path = tmp_path / "best.pt"
    save_checkpoint(state, path)
    assert read_checked_checkpoint(path)["checksum"]  # an intact file reads
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside fc6's weight, the bulk of the file
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["model"].keys() == state["model"].keys()  # torch sees nothing
    with pytest.raises(CheckpointError, match=r"best\.pt: damaged: its contents are not the ones written"):
        read_checked_checkpoint(path)
    Image.new("RGB", (80, 80), (200, 30, 30)).save(tmp_path / "x.png")  # inference.py says so, classifying nothing
    status, out, err = run_cli(monkeypatch, capsys, "--checkpoint", str(path), str(tmp_path / "x.png"))
    assert status == 1 and out == "" and err.startswith(f"error: {path}: damaged: ") and err.count("\n") == 1
    assert "restore it from a copy or train again" in err
    (tmp_path / "run").mkdir()
    path.rename(tmp_path / "run" / "last.pt")  # train.py reads it the same way, for either flag
    for flag, value in (("--evaluate", "run/last.pt"), ("--resume", "run")):
        result = run("train.py", flag, value, cwd=tmp_path, check=False)
        assert result.returncode == 1 and result.stdout == "" and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith(f"error: {flag} {Path('run/last.pt')}: damaged: its contents are not the ones")


def test_a_changed_class_name_or_setting_in_a_checkpoint_is_found(tmp_path: Path) -> None:
    """The checksum covers what a checkpoint holds besides its tensors (the names inference prints, the
    preprocessing): a letter changed in the pickled data is found; a checkpoint whose checksum predates that
    (8 hex digits: the tensors alone) still reads, checked as it was written."""
    from checkpoints import checksum, read_checked_checkpoint, save_checkpoint
    from errors import CheckpointError

    model = AlexNet(3)
    preprocess = {"image_size": 67, "resize_size": 67, "mean": [0.5] * 3, "std": [0.25] * 3, "in_channels": 3}
    state = {"model": model.state_dict(), "model_config": model.config, "classes": ["apple", "b", "c"],
             "preprocess": preprocess}  # fmt: skip
    path = tmp_path / "best.pt"
    save_checkpoint(state, path)
    data = path.read_bytes()
    assert data.count(b"apple") == 1  # in data.pkl, which torch.save stores uncompressed
    path.write_bytes(data.replace(b"apple", b"apric"))
    assert torch.load(path, weights_only=True)["classes"][0] == "apric"  # torch sees nothing
    with pytest.raises(CheckpointError, match=r"best\.pt: damaged: its contents are not the ones written"):
        read_checked_checkpoint(path)
    torch.save({**state, "checksum": checksum(state)}, path)  # as written before the checksum covered the rest
    assert read_checked_checkpoint(path)["classes"] == ["apple", "b", "c"]
