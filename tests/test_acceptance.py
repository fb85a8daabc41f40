"""acceptance.py, the GPU acceptance command, in the mode it runs in without CUDA."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine, run acceptance.py itself (minutes)")
def test_acceptance_command_runs_in_its_no_cuda_mode(tmp_path: Path) -> None:
    result = run("acceptance.py", "--skip-tests", "--jpegs", "40", cwd=tmp_path, timeout=600)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "acceptance: no CUDA device here; running what runs on the CPU, scaled down"
    summary = json.loads(lines[-1])  # one JSON object
    assert summary["ok"] and summary["cuda"] is False and summary["device_name"] == "cpu"
    assert summary["default_run"]["epochs"] == 1 and 0 <= summary["default_run"]["data_share"] <= 1
    jpegs = summary["bench_jpegs"]
    assert jpegs["train_images"] == 30 and jpegs["ours_images_per_second"] > 0 and "streamed" in jpegs["ours_settings"]
    loaders = summary["loaders_jpegs"]  # bench.py --loader-only on the same folder
    for key in ("conventional", "stream", "packed", "packed_jpeg"):
        assert loaders[f"{key}_images_per_second"] > 0
    assert loaders["workers"] == min(16, os.cpu_count() or 1) and loaders["image_size"] == 67
    assert loaders["device"] == "cpu" and loaders["pack_seconds"] > 0 and loaders["pack_jpeg_seconds"] > 0
    assert loaders["pack_bytes"] >= 40 * 3 * 77 * 77 > loaders["pack_jpeg_bytes"] > 0  # 67 px crops of 77 px images
    training = summary["training_packed_vs_memory"]
    assert training["ok"] and training["packed_images_per_second"] > 0 and training["memory_images_per_second"] > 0
    assert not list(tmp_path.iterdir())  # its work happened in a temporary folder, now gone
