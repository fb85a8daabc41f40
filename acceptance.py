"""The GPU acceptance check: everything CUDA-only in this repository, run and timed in one command.

    python acceptance.py                     # on a GPU machine: within 9 minutes, no network, no ../shared
    python acceptance.py --quick             # a first look in about 3 minutes
    python acceptance.py --summary out.json  # where the JSON summary goes (default: acceptance.json)
    python acceptance.py --stages tests loaders_jpegs  # only these stages (a rerun of those that failed)

It runs stages one after the other, each in its own process with a time budget (seconds, CUDA,
full / --quick; the whole stays under the 10 minutes one command may take on a lent GPU machine):

| stage                      | what                                                                | budget   |
|----------------------------|---------------------------------------------------------------------|----------|
| tests                      | `pytest -m gpu tests`: every device-dependent test, on CUDA         | 100 / 60 |
| default_run                | `python train.py` on CUDA (--quick: 1 epoch)                        | 60 / 30  |
| throughput_224             | bench.py, ours, 224 px, batch 256, shapes in memory: 3 x 100 steps  | 50 / 30  |
| throughput_227_paper       | the same with the paper's network (LRN, two towers) at 227 px       | 50 / -   |
| bench_jpegs                | bench.py, ours and the conventional pipeline, ImageNet-sized JPEGs  | 70 / -   |
| loaders_jpegs              | bench.py --loader-only --cold: 6 batches per worker per loader      | 120 / 40 |
| training_packed_vs_memory  | our training from the raw pack, the JPEG pack and from memory       | 90 / -   |

Each stage's result is printed as one JSON line as soon as it ends, and the summary (all stages so
far) is rewritten to --summary after every stage, so that a stage that times out, or a command that
is cut short, still leaves what was measured. A stage that needs a package this Python lacks is
skipped, saying which. Without CUDA it says so in one line and runs the stages scaled down on the
CPU (the figures then mean nothing): exit 0 if every stage worked, else 1.
"""

import argparse
import importlib.util
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

from atomic_files import write_atomically

ROOT = Path(__file__).resolve().parent
# (full, --quick) seconds on CUDA; None: not run. Summed, the full budgets leave a minute of the 10.
BUDGETS = {
    "tests": (100, 60),
    "default_run": (60, 30),
    "throughput_224": (50, 30),
    "throughput_227_paper": (50, None),
    "bench_jpegs": (70, None),
    "loaders_jpegs": (120, 40),
    "training_packed_vs_memory": (90, None),
}
CPU_BUDGET = 240  # seconds per stage on the CPU, where everything is scaled down but slow


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with every default, and the docstring above as it is written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a first look: fewer stages, shorter ones (~3 min)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the test suite's gpu tests")
    parser.add_argument("--stages", nargs="+", choices=list(BUDGETS), help="only these stages (a rerun of some)")
    parser.add_argument("--jpegs", type=int, default=None, help="generated JPEGs (default: 4000 on CUDA, 64 on CPU)")
    parser.add_argument("--summary", default="acceptance.json", help="the JSON summary, rewritten after each stage")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        print("acceptance: no CUDA device here; running what runs on the CPU, scaled down", flush=True)
    start = time.perf_counter()
    summary = {"cuda": cuda, "device_name": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    summary["budgets"] = {name: budget(name, cuda, args.quick) for name in BUDGETS}
    try:  # before the first stage, not after it: what a stage measured is only kept in this file
        write_summary(Path(args.summary), summary, start)
    except OSError as error:
        sys.exit(f"error: --summary {args.summary}: cannot be written ({error.strerror}); give a writable path")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.keep or scratch)
        work.mkdir(parents=True, exist_ok=True)
        folder = None
        for name, stage in stages(args, cuda):
            left_out = (name == "tests" and args.skip_tests) or (args.stages and name not in args.stages)
            if summary["budgets"][name] is None or left_out:
                continue
            if name in ("bench_jpegs", "loaders_jpegs", "training_packed_vs_memory") and folder is None:
                folder = write_jpegs(work / "jpegs", args.jpegs or (4000 if cuda else 64))
            result = stage(work, folder, cuda, summary["budgets"][name])
            summary[name] = result
            print(json.dumps({"stage": name, **result}), flush=True)
            keep_summary(Path(args.summary), summary, start)
    keep_summary(Path(args.summary), summary, start)
    print(json.dumps(summary))
    sys.exit(0 if summary["ok"] else 1)


def budget(name: str, cuda: bool, quick: bool) -> float | None:
    full, short = BUDGETS[name]
    chosen = short if quick else full
    return None if chosen is None else (chosen if cuda else CPU_BUDGET)


def write_summary(path: Path, summary: dict, start: float) -> None:
    summary.pop("seconds", None), summary.pop("ok", None)  # kept last in the file
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["ok"] = all(part.get("ok", True) for part in summary.values() if isinstance(part, dict))
    write_atomically(path, lambda f: f.write((json.dumps(summary, indent=1) + "\n").encode()))


def keep_summary(path: Path, summary: dict, start: float) -> None:
    """write_summary between stages: a disk that fills up meanwhile is one warning line, and the stages go on
    (each has printed its line, and the last line printed is the whole summary)."""
    try:
        write_summary(path, summary, start)
    except OSError as error:
        print(f"warning: --summary {path}: not updated ({error.strerror or error}); the lines printed hold every "
              "stage's figures", file=sys.stderr, flush=True)  # fmt: skip


def stages(args: argparse.Namespace, cuda: bool) -> list:
    """(name, function(work, folder, cuda, budget) -> result dict) in the order they run."""
    size, batch = (224, 256) if cuda else (67, 16)
    steps = ["--steps", "100", "--warmup", "20", "--repeats", "3"] if cuda else ["--steps", "2", "--warmup", "1"]
    if args.quick and cuda:
        steps = ["--steps", "30", "--warmup", "10"]
    # Streamed JPEGs: the CPUs' decoding sets the pace, not the GPU; fewer steps time it as well.
    streamed = ["--steps", "30", "--warmup", "10"] if cuda else steps
    shapes = ["--dataset", "shapes", "--train-size", "4096" if cuda else "64", "--only", "ours", *steps]
    return [
        ("tests", lambda work, folder, cuda, seconds: run_tests(cuda, args.quick, seconds)),
        ("default_run", lambda work, folder, cuda, seconds: default_run(work, cuda, args.quick, seconds)),
        ("throughput_224", lambda work, folder, cuda, seconds: throughput(work, shapes, size, batch, seconds)),
        (
            "throughput_227_paper",
            lambda work, folder, cuda, seconds: throughput(
                work, [*shapes, "--model", "paper"], size + 3, batch, seconds
            ),
        ),  # fmt: skip
        ("bench_jpegs", lambda work, folder, cuda, seconds: bench(work, folder, streamed, size, batch, seconds)),
        ("loaders_jpegs", lambda work, folder, cuda, seconds: loaders(work, folder, size, batch, seconds, cuda)),
        (
            "training_packed_vs_memory",
            lambda work, folder, cuda, seconds: packed_vs_memory(work, folder, steps, size, batch, seconds),
        ),  # fmt: skip
    ]


def run(
    command: list[str], cwd: Path, seconds: float, env: dict | None = None
) -> tuple[subprocess.CompletedProcess | None, float]:
    """(the finished process, or None if it ran past `seconds`, and the seconds it took)."""
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=seconds, env=env)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start
    return result, time.perf_counter() - start


def failed(result: subprocess.CompletedProcess | None, budget: float) -> dict | None:
    """The stage's result when its process ran past its budget or failed; None when it worked."""
    if result is None:
        return {"ok": False, "error": f"ran past its budget of {budget:.0f} s"}
    if result.returncode != 0:
        return {"ok": False, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return None


def run_tests(cuda: bool, quick: bool, seconds: float) -> dict:
    """pytest on the device tests: `-m gpu` on CUDA (--quick: the fast ones); on the CPU, the fast device tests."""
    if importlib.util.find_spec("pytest") is None:
        return {"ok": True, "skipped": "pytest is not installed in this Python"}
    marks = ("gpu and not slow" if quick else "gpu") if cuda else "not slow"
    selection = ["-m", marks, "tests" if cuda else "tests/test_devices.py"]
    # On CUDA, four pytest workers share the GPU where pytest-xdist is installed: most of these tests
    # start a script, and its seconds go to importing torch and starting CUDA, not to the GPU.
    workers = ["-n", "4"] if cuda and importlib.util.find_spec("xdist") is not None else []
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *workers, *selection]
    result, took = run(command, ROOT, seconds, env={**os.environ, "COLUMNS": "400"})  # -rfE's lines whole
    if result is None:
        return failed(result, seconds)
    lines = result.stdout.strip().splitlines() or [""]
    last = lines[-1]  # "3 passed, 1 skipped in 9.1s"
    counts = {word: 0 for word in ("passed", "failed", "skipped", "error")}
    for part in last.split(","):
        number, _, word = part.strip().partition(" ")
        word = word.split(" ")[0].rstrip("s") if word.startswith("error") else word.split(" ")[0]
        if number.isdigit() and word in counts:
            counts[word] = int(number)
    failures = [line[:400] for line in lines if line.startswith(("FAILED ", "ERROR "))]  # -rfE's summary
    return {**counts, "ok": result.returncode == 0, "seconds": round(took, 1), "last_line": last, "failures": failures}


def default_run(work: Path, cuda: bool, quick: bool, seconds: float) -> dict:
    """`python train.py` on the device (--quick: one epoch; on the CPU: one epoch of 5 steps on fewer images)."""
    scaled_down = ["--epochs", "1", "--max-steps", "5", "--train-size", "640", "--val-size", "128"]
    extra = (["--device", "cuda"] + (["--epochs", "1"] if quick else [])) if cuda else ["--device", "cpu", *scaled_down]
    command = [sys.executable, str(ROOT / "train.py"), *extra, "--name", "default", "--out-dir", str(work / "runs")]
    result, took = run(command, work, seconds)
    if failed(result, seconds):
        return failed(result, seconds)
    rows = [json.loads(line) for line in (work / "runs" / "default" / "metrics.jsonl").read_text().splitlines()]
    return {"ok": True, "seconds": round(took, 1), "epochs": len(rows), "val_top1": max(r["val_top1"] for r in rows),
            "images_per_second": rows[-1]["images_per_second"], "data_share": data_share(rows)}  # fmt: skip


def data_share(rows: list[dict]) -> float:
    """The share of training time spent waiting for data, over the epochs."""
    data = sum(row["data_seconds"] for row in rows)
    return round(data / max(data + sum(row["compute_seconds"] for row in rows), 1e-9), 3)


def run_bench(work: Path, arguments: list[str], size: int, batch: int, seconds: float) -> dict:
    """bench.py --json with these arguments, size, batch and --workers (up to 16) -> its figures, or the error."""
    workers = str(min(16, os.cpu_count() or 1))
    shape = ["--image-size", str(size), "--batch-size", str(batch), "--workers", workers]
    command = [sys.executable, str(ROOT / "bench.py"), *arguments, *shape, "--data-root", str(work / "data"), "--json"]
    result, took = run(command, work, seconds)
    if failed(result, seconds):
        return failed(result, seconds)
    return {"ok": True, "seconds": round(took, 1), **json.loads(result.stdout.strip().splitlines()[-1])}


def throughput(work: Path, arguments: list[str], size: int, batch: int, seconds: float) -> dict:
    """Our training step alone (data in memory on the device), timed over synchronised steps several times,
    with its precision and its TFLOP/s against a matrix product measured in the same process."""
    figures = run_bench(work, arguments, size, batch, seconds)
    if not figures["ok"]:
        return figures
    tflops = figures["images_per_second"] * figures["flops_per_image"] / 1e12
    keep = ("images_per_second", "images_per_second_runs", "precision", "cudnn_benchmark", "matmul_tflops",
            "flops_per_image", "peak_memory_mb", "settings", "seconds")  # fmt: skip
    result = {"ok": True, "image_size": size, "batch_size": batch, **{key: figures[key] for key in keep}}
    return {**result, "tflops": tflops, "fraction_of_matmul": tflops / figures["matmul_tflops"]}


def bench(work: Path, folder: Path, steps: list[str], size: int, batch: int, seconds: float) -> dict:
    """bench.py: our pipeline and the conventional one on the same JPEGs (streamed), model, batch and device."""
    arguments = ["--data", str(folder), "--loader", "stream", *steps, "--timeout", str(seconds / 2)]
    figures = run_bench(work, arguments, size, batch, seconds)
    if not figures["ok"]:
        return figures
    keep = ("ours_images_per_second", "baseline_images_per_second", "ratio", "ours_tflops", "ours_peak_memory_mb",
            "train_images", "ours_settings", "seconds")  # fmt: skip
    return {"ok": True, **{key: figures[key] for key in keep}}


def loaders(work: Path, folder: Path, size: int, batch: int, seconds: float, cuda: bool) -> dict:
    """bench.py --loader-only --cold: images per second each loader delivers to the device, without a model,
    the packs read from the disk rather than the page cache."""
    workers = min(16, os.cpu_count() or 1)
    per_worker = 6 if cuda else 3  # six batches per worker on CUDA: every worker busy well past its start
    count = str(per_worker * workers * batch)
    arguments = ["--data", str(folder), "--loader-only", "--cold", "--loader-images", count, "--pack-dir",
                 str(work / "packs"), "--timeout", str(seconds / 4)]  # fmt: skip
    figures = run_bench(work, arguments, size, batch, seconds)
    keep = ("ok", "error", "conventional_images_per_second", "stream_images_per_second", "packed_images_per_second",
            "packed_jpeg_images_per_second", "workers", "image_size", "images", "device", "pack_bytes", "pack_seconds",
            "pack_jpeg_bytes", "pack_jpeg_seconds", "packed_jpeg_decoder", "page_cache", "seconds")  # fmt: skip
    return {key: figures[key] for key in keep if key in figures}


def packed_vs_memory(work: Path, folder: Path, steps: list[str], size: int, batch: int, seconds: float) -> dict:
    """Our training throughput (bench.py --only ours) reading the raw pack and the JPEG pack (packed by
    `loaders`, or now; on CUDA the JPEGs are decoded on the GPU), and with the images in memory."""
    sources = {
        "packed": ["--loader", "packed", "--pack-format", "raw"],
        "packed_jpeg": ["--loader", "packed", "--pack-format", "jpeg"],
        "memory": ["--loader", "memory"],
    }
    rates = {}
    for name, loader in sources.items():
        arguments = ["--data", str(folder), *loader, "--pack-dir", str(work / "packs"), "--only", "ours"]
        figures = run_bench(work, [*arguments, *steps], size, batch, seconds / len(sources))
        if not figures["ok"]:
            return {"ok": False, "error": f"{' '.join(loader)}: {figures['error']}", **rates}
        rates[f"{name}_images_per_second"] = figures["images_per_second"]
    memory = rates["memory_images_per_second"]
    return {"ok": True, **rates, "ratio": rates["packed_images_per_second"] / memory,
            "jpeg_ratio": rates["packed_jpeg_images_per_second"] / memory}  # fmt: skip


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
