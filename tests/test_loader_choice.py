"""--loader auto on an image folder: which loader and pack format it picks, and the line that says why."""

from pathlib import Path

import pytest
import torch

import data_pipeline
from data_pipeline import DataConfig, pick_loader
from imagenet import Listing

CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # device objects only: nothing runs on them
# 10,000 images stored at 2560 px take as much as ImageNet's 1 M at 256 (197 GB as raw uint8), listed faster.
IMAGES, SIZE = 10_000, 2560


def listing(tmp_path: Path, images: int) -> Listing:
    """A listing of `images` training images (the files need not exist: only their count is used)."""
    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    train_dir.mkdir(exist_ok=True), val_dir.mkdir(exist_ok=True)
    samples = [(train_dir / f"{i}.jpg", i % 2) for i in range(images)]
    return Listing(samples, samples[:10], ["a", "b"], None, train_dir, val_dir, [], [], [])


@pytest.mark.parametrize(
    "device, memory, expected",
    [
        (CUDA, 128e9, ("packed", "jpeg")),  # a raw pack would not fit in the page cache: JPEG, decoded by nvJPEG
        (CUDA, 400e9, ("stream", "raw")),  # it would fit: no reason to decode JPEGs
        (CPU, 128e9, ("stream", "raw")),  # the CPU would decode the JPEGs of a pack no faster than the files
    ],
)
def test_big_folders_stream_unless_only_a_jpeg_pack_fits(device, memory, expected, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(data_pipeline, "host_memory_bytes", lambda: memory)
    config = DataConfig(data=str(tmp_path), data_root=str(tmp_path / "data"))
    assert pick_loader(config, listing(tmp_path, IMAGES), 3, SIZE, device) == expected


def test_on_cuda_the_jpeg_pack_is_chosen_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(data_pipeline, "host_memory_bytes", lambda: 128e9)
    config = DataConfig(data=str(tmp_path), data_root=str(tmp_path / "data"))
    assert pick_loader(config, listing(tmp_path, IMAGES), 3, SIZE, CUDA) == ("packed", "jpeg")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "197 GB, more than this machine's 128 GB" in lines[0] and "nvJPEG" in lines[0]


def test_small_folders_stay_in_memory_and_explicit_choices_win(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_pipeline, "host_memory_bytes", lambda: 1e9)
    config = DataConfig(data=str(tmp_path), data_root=str(tmp_path / "data"))
    assert pick_loader(config, listing(tmp_path, 1000), 3, 256, CUDA) == ("memory", "raw")
    explicit = DataConfig(data=str(tmp_path), data_root=str(tmp_path / "data"), loader="stream")
    assert pick_loader(explicit, listing(tmp_path, IMAGES), 3, SIZE, CUDA) == ("stream", "raw")
