"""The GPU acceptance check: everything CUDA-only in this repository, run and timed in one command.

    python acceptance.py                 # on a GPU machine: a few minutes, no network; one JSON summary
    python acceptance.py --skip-tests    # the runs and benchmarks only

On a CUDA machine it runs, in a temporary folder:
1. the tests marked `gpu` (`pytest -m gpu tests`: every device-dependent test, on CUDA);
2. the default run (`python train.py`) on CUDA;
3. bench.py at 224 px, batch 256: on CIFAR-10 when ../shared/data/cifar10 is there, and on a folder
   of ImageNet-sized JPEGs (about 500x375) that it writes itself, streamed as ImageNet would be;
4. on that folder, bench.py --loader-only (the conventional, streamed and packed loaders without a
   model, 20,000 images each; the packs' size and packing time) and our training throughput from
   the raw pack against the same images in memory;
then prints one JSON object with every figure, and exits 1 if a step failed. Without CUDA it says so
in one line and runs what it can on the CPU, scaled down (the figures then mean nothing); exit 0
if all of that worked.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-tests", action="store_true", help="leave out the test suite's gpu tests")
    parser.add_argument("--jpegs", type=int, default=None, help="generated JPEGs (default: 4000 on CUDA, 64 on CPU)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        print("acceptance: no CUDA device here; running what runs on the CPU, scaled down", flush=True)
    start = time.perf_counter()
    summary = {"cuda": cuda, "device_name": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.keep or scratch)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_tests:
            summary["tests"] = run_tests(cuda)
        summary["default_run"] = default_run(work, cuda)
        size, batch = (224, 256) if cuda else (67, 16)
        if CIFAR10.is_dir() and cuda:
            summary["bench_cifar10"] = bench(work, ["--data", str(CIFAR10)], size, batch, cuda)
        folder = write_jpegs(work / "jpegs", args.jpegs or (4000 if cuda else 64))
        summary["bench_jpegs"] = bench(work, ["--data", str(folder), "--loader", "stream"], size, batch, cuda)
        summary["loaders_jpegs"] = loaders(work, folder, size, batch, cuda)
        summary["training_packed_vs_memory"] = packed_vs_memory(work, folder, size, batch, cuda)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["ok"] = all(part.get("ok", True) for part in summary.values() if isinstance(part, dict))
    print(json.dumps(summary))
    sys.exit(0 if summary["ok"] else 1)


def run_tests(cuda: bool) -> dict:
    """pytest on the device tests: `-m gpu` on CUDA; on the CPU, the fast device tests."""
    selection = ["-m", "gpu", "tests"] if cuda else ["-m", "not slow", "tests/test_devices.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    counts = {word: 0 for word in ("passed", "failed", "skipped", "error")}
    for part in (result.stdout.strip().splitlines() or [""])[-1].split(","):  # "3 passed, 1 skipped in 9.1s"
        number, _, word = part.strip().partition(" ")
        word = word.split(" ")[0].rstrip("s") if word.startswith("error") else word.split(" ")[0]
        if number.isdigit() and word in counts:
            counts[word] = int(number)
    return {**counts, "ok": result.returncode == 0, "last_line": (result.stdout.strip().splitlines() or [""])[-1]}


def default_run(work: Path, cuda: bool) -> dict:
    """`python train.py` on the device (on the CPU: one epoch of 5 steps on fewer images)."""
    scaled_down = ["--epochs", "1", "--max-steps", "5", "--train-size", "640", "--val-size", "128"]
    extra = ["--device", "cuda"] if cuda else ["--device", "cpu", *scaled_down]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *extra, "--name", "default", "--out-dir",
                             str(work / "runs")], cwd=work, capture_output=True, text=True, timeout=300)  # fmt: skip
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return {"ok": False, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    rows = [json.loads(line) for line in (work / "runs" / "default" / "metrics.jsonl").read_text().splitlines()]
    return {"ok": True, "seconds": round(seconds, 1), "epochs": len(rows), "val_top1": max(r["val_top1"] for r in rows),
            "images_per_second": rows[-1]["images_per_second"], "data_share": data_share(rows)}  # fmt: skip


def data_share(rows: list[dict]) -> float:
    """The share of training time spent waiting for data, over the epochs."""
    data = sum(row["data_seconds"] for row in rows)
    return round(data / max(data + sum(row["compute_seconds"] for row in rows), 1e-9), 3)


def bench(work: Path, data: list[str], size: int, batch: int, cuda: bool) -> dict:
    """bench.py --json: our pipeline and the conventional one on the same data, model, batch and device."""
    steps = ["--steps", "30", "--warmup", "10"] if cuda else ["--steps", "3", "--warmup", "1"]
    figures = run_bench(work, [*data, *steps], size, batch)
    if not figures["ok"]:
        return figures
    keep = ("ours_images_per_second", "baseline_images_per_second", "ratio", "ours_tflops", "ours_peak_memory_mb",
            "train_images", "ours_settings")  # fmt: skip
    return {"ok": True, **{key: figures[key] for key in keep}}


def run_bench(work: Path, arguments: list[str], size: int, batch: int) -> dict:
    """bench.py --json with these arguments, size, batch and --workers (up to 16) -> its figures, or the error."""
    workers = str(min(16, os.cpu_count() or 1))
    shape = ["--image-size", str(size), "--batch-size", str(batch), "--workers", workers]
    command = [sys.executable, str(ROOT / "bench.py"), *arguments, *shape, "--data-root", str(work / "data"), "--json"]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return {"ok": False, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return {"ok": True, **json.loads(result.stdout.strip().splitlines()[-1])}


def loaders(work: Path, folder: Path, size: int, batch: int, cuda: bool) -> dict:
    """bench.py --loader-only: images per second each loader delivers to the device, without a model."""
    count = "20000" if cuda else "64"
    arguments = ["--data", str(folder), "--loader-only", "--loader-images", count, "--pack-dir", str(work / "packs")]
    figures = run_bench(work, arguments, size, batch)
    keep = ("ok", "error", "conventional_images_per_second", "stream_images_per_second", "packed_images_per_second",
            "packed_jpeg_images_per_second", "workers", "image_size", "device", "pack_bytes", "pack_seconds",
            "pack_jpeg_bytes", "pack_jpeg_seconds")  # fmt: skip
    return {key: figures[key] for key in keep if key in figures}


def packed_vs_memory(work: Path, folder: Path, size: int, batch: int, cuda: bool) -> dict:
    """Our training throughput (bench.py --only ours) reading the raw pack (packed by `loaders`), and with the
    images in memory."""
    steps = ["--steps", "30", "--warmup", "10"] if cuda else ["--steps", "2", "--warmup", "1"]
    rates = {}
    for loader in ("packed", "memory"):
        arguments = ["--data", str(folder), "--loader", loader, "--pack-dir", str(work / "packs"), "--only", "ours"]
        figures = run_bench(work, [*arguments, *steps], size, batch)
        if not figures["ok"]:
            return {"ok": False, "error": f"--loader {loader}: {figures['error']}"}
        rates[loader] = figures["images_per_second"]
    return {"ok": True, "packed_images_per_second": rates["packed"], "memory_images_per_second": rates["memory"],
            "ratio": rates["packed"] / rates["memory"]}  # fmt: skip


def write_jpegs(root: Path, count: int, classes: int = 10) -> Path:
    """`count` JPEGs of about 500x375 (ImageNet's typical size), smooth random colour fields, in an
    ImageNet-layout folder with 10 classes (a tenth of them in val/), written in parallel."""
    split = ["val" if (i // classes) % 10 == 0 else "train" for i in range(count)]
    jobs = [(root / split[i] / f"class{i % classes}" / f"{i}.jpg", i) for i in range(count)]
    for folder in {path.parent for path, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(write_jpeg, jobs, chunksize=64))
    return root


def write_jpeg(job: tuple[Path, int]) -> None:
    path, seed = job
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(400, 600)), int(rng.integers(300, 450))
    small = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)  # upscaled: photo-like
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path, quality=90)


if __name__ == "__main__":
    main()
