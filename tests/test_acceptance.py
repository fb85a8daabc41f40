"""acceptance.py, the GPU acceptance command, in the mode it runs in without CUDA."""

import json
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
    assert not list(tmp_path.iterdir())  # its work happened in a temporary folder, now gone
