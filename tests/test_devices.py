"""Every device present: the CPU, and CUDA or Apple MPS where there is one (skipped where absent, as
torchvision's tests do; `pytest -m gpu` runs just those on a GPU machine). The model in each precision,
train.py in memory, streamed and packed, packed batches on the device, exact --resume with
--deterministic, inference, and checkpoints and RNG states moving between devices. The GPU crop path
against the CPU one: test_pipeline.py."""

import contextlib
import copy
import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, SCRIPT_ENV, devices, gpus, run, save_checkpoint_file
from PIL import Image

from alexnet import AlexNet
from checkpoints import load_checkpoint, rng_states, set_rng_states
from data_pipeline import DataConfig, Packed, load_data
from engine import autocast, predict
from packs import PACK_FORMATS
from speedups import fast_forward

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# How far two JPEG decoders' pixels may differ (levels of 255) on a 4:4:4 pack: IDCT rounding. On an H200, nvJPEG's
# pixels equalled Pillow's (0 levels apart; with 4:2:0 these noise images were a mean of 3.2 and up to 25 apart).
JPEG_DECODERS_MEAN, JPEG_DECODERS_MAX = 0.1, 2
TINY = ["--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--image-size", "67", "--log-interval", "1"]


@functools.cache
def seeded_model() -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(5, dropout=0.0)


def fresh_model() -> AlexNet:
    """A seeded 5-class AlexNet without dropout, a copy of one built once for the module: a test may change it."""
    return copy.deepcopy(seeded_model())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_forward_and_backward_in_each_precision(device: str, precision: str) -> None:
    reference = fresh_model()
    reference.classifier[-1].weight.data.normal_(std=0.05)  # logits of a useful size to compare
    model = copy.deepcopy(reference).to(device)
    x, labels = torch.randn(2, 3, 67, 67), torch.tensor([0, 3])  # (fp16 and bf16 are emulated on most CPUs: slow)
    with autocast(torch.device(device), PRECISIONS[precision]):
        logits = model(x.to(device))
        loss = F.cross_entropy(logits.float(), labels.to(device))
    loss.backward()
    assert logits.dtype == (PRECISIONS[precision] or torch.float32)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        expected = reference(x)
    # fp32 on a GPU may use TF32 tensor cores (cuDNN's default); bf16 keeps 8 bits of mantissa.
    tolerance = {"fp32": 1e-4 if device == "cpu" else 1e-2, "bf16": 6e-2, "fp16": 1e-2}[precision]
    torch.testing.assert_close(logits.float().cpu(), expected, atol=tolerance * expected.abs().max().item(), rtol=0)


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """fp32 products and convolutions in full fp32 on CUDA: no TF32 tensor cores (cuDNN's default, and what
    engine.configure_device turns on for training, for the rest of the process)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("size", [67, 224])  # the fc6 fold; a 5x5 map pooled (by matrix products on MPS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_fast_forward_on_the_device_equals_the_plain_model(device: str, size: int, deterministic: bool) -> None:
    """Against the plain network on the same device, in full fp32: what differs is the speed-ups alone (on an
    H200 a CPU reference failed: TF32 rounding through eight layers, not the speed-ups)."""
    reference = fresh_model().to(device)
    model = copy.deepcopy(reference)
    x = torch.randn(2, 3, size, size, device=device)  # at 67 px, enough images for the fold
    previous = torch.are_deterministic_algorithms_enabled()
    with full_fp32():
        torch.use_deterministic_algorithms(deterministic)  # the fast path pools by matrix products then (CUDA)
        try:
            logits = fast_forward(model)(x)
            logits.square().sum().backward()
        finally:
            torch.use_deterministic_algorithms(previous)
        expected = reference(x)  # outside: CUDA's adaptive pooling has no deterministic backward
        expected.square().sum().backward()
    tolerance = 1e-4
    torch.testing.assert_close(logits, expected, atol=tolerance * expected.abs().max().item(), rtol=0)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=tolerance * theirs.grad.abs().max().item(), rtol=0)


def write_folder(root: Path, per_class: int = 8) -> Path:
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (48, 40, 3), dtype=torch.uint8, generator=generator)
                pixels[..., label] = 255
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.jpg")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("device", gpus())  # on the CPU: every other test of train.py
@pytest.mark.parametrize(
    "loader, amp", [("memory", "auto"), ("stream", "auto"), ("packed", "auto"), ("memory", "fp16")]
)
def test_train_a_few_steps_on_the_device(device: str, loader: str, amp: str, tmp_path: Path) -> None:
    """In memory (uint8 on the device, grid crops), streamed and packed (pinned memory, non_blocking
    copies), and fp16 with its GradScaler; cuDNN autotuning and TF32 in all of them."""
    write_folder(tmp_path / "folder")
    args = ["--data", "folder", "--device", device, "--loader", loader, "--amp", amp, "--workers", "2", *TINY]
    args += ["--name", "r"]
    result = run("train.py", *args, cwd=tmp_path)
    assert f"device {device}" in result.stdout
    row = json.loads((tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(isinstance(value, float) and value == value for key, value in row.items() if key != "epoch")
    model, meta = load_checkpoint(tmp_path / "runs" / "r" / "last.pt", "cpu")  # saved on the device, read on the CPU
    assert meta["classes"] == ["a", "b"] and next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("fmt", PACK_FORMATS)
def test_packed_batches_reach_the_device_unchanged(device: str, fmt: str, tmp_path: Path) -> None:
    """Packed batches (pinned memory and non_blocking copies on CUDA) equal those read on the CPU,
    and, from a raw pack, the in-memory batches."""
    write_folder(tmp_path / "folder")
    config = DataConfig(data=str(tmp_path / "folder"), data_root=str(tmp_path / "data"), loader="packed",
                        pack_format=fmt, image_size=67, batch_size=4, workers=2)  # fmt: skip
    on_device = load_data(config, torch.device(device))
    on_cpu = load_data(config, torch.device("cpu"))
    in_memory = load_data(replace(config, loader="memory"), torch.device("cpu"))
    for split in ("train", "val"):
        batches = list(getattr(on_device, split).batches(seed=1, start=1))
        assert len(batches) == getattr(on_device, split).num_batches() - 1 > 0
        assert all(images.device.type == device and labels.device.type == device for images, labels in batches)
        references = [list(getattr(data, split).batches(seed=1, start=1)) for data in (on_cpu, in_memory)]
        for reference in references[: 2 if fmt == "raw" else 1]:  # JPEG is lossy: only itself on the CPU
            for (images, labels), (expected_images, expected_labels) in zip(batches, reference, strict=True):
                assert torch.equal(labels.cpu(), expected_labels)
                if getattr(on_device, split).decode_on_device:  # nvJPEG against Pillow: two decoders' rounding
                    difference = (images.cpu().float() - expected_images.float()).abs()
                    message = f"nvJPEG - Pillow: mean {difference.mean():.2f}, max {difference.max():.0f} levels"
                    assert difference.mean() < JPEG_DECODERS_MEAN and difference.max() <= JPEG_DECODERS_MAX, message
                else:
                    assert torch.equal(images.cpu(), expected_images)


def test_a_jpeg_pack_decoded_a_batch_at_a_time_has_the_threads_pixels(tmp_path: Path) -> None:
    """The batch decoder that nvJPEG runs on CUDA (torchvision.io.decode_jpeg with a list), here on the CPU,
    against Pillow in the reading threads: two builds of libjpeg-turbo with the same settings, the same pixels."""
    write_folder(tmp_path / "folder")
    config = DataConfig(data=str(tmp_path / "folder"), data_root=str(tmp_path / "data"), loader="packed",
                        pack_format="jpeg", image_size=67, batch_size=4, workers=2)  # fmt: skip
    threads = load_data(config, torch.device("cpu")).train
    batched = Packed(threads.files, 4, True, 2, torch.device("cpu"), decode_on_device=True)
    assert not threads.decode_on_device and batched.decoder == "torchvision on the CPU"
    pairs = list(zip(batched.batches(seed=1), threads.batches(seed=1), strict=True))
    assert len(pairs) == threads.num_batches() > 1
    for (images, labels), (expected_images, expected_labels) in pairs:
        assert torch.equal(labels, expected_labels) and torch.equal(images, expected_images)
    for source in (batched, threads):  # take(), for pictures and samples: the same decoded images
        images, labels = source.take([3, 0])
        assert len(images) == 2 and torch.equal(images, threads.files.gather(torch.tensor([3, 0]))[0])


@pytest.mark.slow
@pytest.mark.parametrize("device", devices())
def test_resume_with_deterministic_equals_an_uninterrupted_run(device: str, tmp_path: Path) -> None:
    # At 224 px the last map is 5x5 and pooled (67 px folds the pooling into fc6): on CUDA, by matrix products.
    size = "67" if device == "cpu" else "224"
    shapes = ["--train-size", "48", "--val-size", "16", "--batch-size", "16", "--image-size", size, "--device", device]
    shapes += ["--deterministic", "--no-plots"]  # the weights and metrics are what is compared
    run("train.py", *shapes, "--epochs", "2", "--name", "straight", cwd=tmp_path)
    run("train.py", *shapes, "--epochs", "1", "--name", "split", cwd=tmp_path)
    run("train.py", "--resume", "runs/split", "--epochs", "2", cwd=tmp_path)
    timing = ("_seconds", "images_per_second")
    states = []
    for name in ("straight", "split"):
        rows = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        rows = [{k: v for k, v in row.items() if not k.endswith(timing)} for row in rows]
        states.append((torch.load(tmp_path / "runs" / name / "last.pt", weights_only=True)["model"], rows))
    (straight, straight_rows), (split, split_rows) = states
    assert split_rows == straight_rows and len(split_rows) == 2
    assert all(torch.equal(straight[key], split[key]) for key in straight)


def checkpoint_on(device: str, path: Path) -> AlexNet:
    """A train.py-style checkpoint of a 3-class AlexNet whose weights live on `device` when saved."""
    torch.manual_seed(0)
    model = AlexNet(3).to(device)
    preprocess = {"image_size": 67, "resize_size": 77, "mean": [0.5] * 3, "std": [0.25] * 3, "in_channels": 3}
    save_checkpoint_file(path, model, ["a", "b", "c"], preprocess)
    return model


@pytest.mark.parametrize("device", gpus())
def test_checkpoints_and_rng_states_move_between_devices(device: str, tmp_path: Path) -> None:
    saved = checkpoint_on(device, tmp_path / "gpu.pt")
    on_cpu, _ = load_checkpoint(tmp_path / "gpu.pt", "cpu")
    assert all(torch.equal(a.cpu(), b) for a, b in zip(saved.state_dict().values(), on_cpu.state_dict().values()))
    saved = checkpoint_on("cpu", tmp_path / "cpu.pt")
    on_device, _ = load_checkpoint(tmp_path / "cpu.pt", device)
    assert next(on_device.parameters()).device.type == device
    assert all(torch.equal(a, b.cpu()) for a, b in zip(saved.state_dict().values(), on_device.state_dict().values()))
    # The RNG states a checkpoint carries (dropout on the device draws from the device's generator).
    states = rng_states(torch.device(device))
    first = torch.rand(5, device=device), torch.rand(5)
    set_rng_states(states, torch.device(device))
    again = torch.rand(5, device=device), torch.rand(5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("device", gpus())
def test_inference_on_the_device_equals_the_cpu(device: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import inference

    checkpoint_on("cpu", tmp_path / "best.pt")
    images = [torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(3)]  # fmt: skip
    for tta in ("none", "10crop"):
        cpu = predict(*load_checkpoint(tmp_path / "best.pt", "cpu"), images, topk=3, tta=tta)
        gpu = predict(*load_checkpoint(tmp_path / "best.pt", device), images, topk=3, tta=tta)
        for a, b in zip(cpu, gpu):
            assert [name for name, _ in a] == [name for name, _ in b]
            assert [p for _, p in a] == pytest.approx([p for _, p in b], abs=1e-3)
    Image.new("RGB", (80, 60), "red").save(tmp_path / "x.png")
    outputs = []
    for name in ("cpu", device):  # the command line: --device
        inference.main([str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "best.pt"), "--device", name, "--json"])
        outputs.append(json.loads(capsys.readouterr().out)["predictions"])
    assert [p["class"] for p in outputs[0]] == [p["class"] for p in outputs[1]]


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torchrun_with_nccl_on_the_gpus_present(tmp_path: Path) -> None:
    """One process per GPU, up to two: on one GPU a world of one still joins an NCCL process group."""
    processes = min(2, torch.cuda.device_count())
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    args = ["--device", "cuda", "--train-size", "64", "--val-size", "32", "--batch-size", "16", "--epochs", "1"]
    command = [*torchrun, str(ROOT / "train.py"), *args, "--name", "ddp"]
    env = {**SCRIPT_ENV, "PATH": f"{Path(sys.executable).parent}:{SCRIPT_ENV['PATH']}"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (" x 2 processes" in result.stdout) == (processes == 2) and (tmp_path / "runs" / "ddp" / "last.pt").is_file()
