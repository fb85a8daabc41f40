"""acceptance.py, the GPU acceptance command, in the mode it runs in without CUDA; and its stages' budgets."""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import run

import acceptance
import bench


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine, run acceptance.py itself (minutes)")
def test_acceptance_command_runs_in_its_no_cuda_mode(tmp_path: Path) -> None:
    result = run("acceptance.py", "--skip-tests", "--jpegs", "40", cwd=tmp_path, timeout=900)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "acceptance: no CUDA device here; running what runs on the CPU, scaled down"
    summary = json.loads(lines[-1])  # one JSON object, after one line per stage as it ended
    stages = [json.loads(line)["stage"] for line in lines[1:-1]]
    assert stages == [name for name in acceptance.BUDGETS if name != "tests"]
    assert json.loads((tmp_path / "acceptance.json").read_text()) == summary  # the file holds the same
    assert summary["ok"] and summary["cuda"] is False and summary["device_name"] == "cpu"
    assert summary["default_run"]["epochs"] == 1 and 0 <= summary["default_run"]["data_share"] <= 1
    for name, size in (("throughput_224", 67), ("throughput_227_paper", 70)):
        figures = summary[name]
        assert figures["image_size"] == size and figures["images_per_second"] > 0 and figures["precision"]
        assert figures["matmul_tflops"] > 0 and figures["tflops"] > 0 and "in memory" in figures["settings"]
    jpegs = summary["bench_jpegs"]
    assert jpegs["train_images"] == 30 and jpegs["ours_images_per_second"] > 0 and "streamed" in jpegs["ours_settings"]
    loaders = summary["loaders_jpegs"]  # bench.py --loader-only on the same folder
    for key in ("conventional", "stream", "packed", "packed_jpeg"):
        assert loaders[f"{key}_images_per_second"] > 0
    assert loaders["workers"] == min(16, os.cpu_count() or 1) and loaders["image_size"] == 67
    assert loaders["images"] == 3 * loaders["workers"] * 16 and loaders["page_cache"] == "evicted before timing"
    assert loaders["packed_jpeg_decoder"] == "Pillow in the reading threads"  # nvJPEG on the GPU on CUDA
    assert loaders["device"] == "cpu" and loaders["pack_seconds"] > 0 and loaders["pack_jpeg_seconds"] > 0
    assert loaders["pack_bytes"] >= 40 * 3 * 77 * 77 > loaders["pack_jpeg_bytes"] > 0  # 67 px crops of 77 px images
    training = summary["training_packed_vs_memory"]
    assert training["ok"] and training["memory_images_per_second"] > 0
    for key in ("packed", "packed_jpeg"):  # the raw pack, and the JPEG pack (decoded on the GPU on CUDA)
        rate = training[f"{key}_images_per_second"]
        assert (
            rate > 0
            and training["ratio" if key == "packed" else "jpeg_ratio"] == rate / training["memory_images_per_second"]
        )
    assert [path.name for path in tmp_path.iterdir()] == ["acceptance.json"]  # the work folder is gone


def test_the_full_budgets_fit_one_ten_minute_command_and_quick_about_three() -> None:
    full = sum(acceptance.budget(name, cuda=True, quick=False) for name in acceptance.BUDGETS)
    quick = sum(acceptance.budget(name, cuda=True, quick=True) or 0 for name in acceptance.BUDGETS)
    assert full <= 540 and quick <= 200


def test_a_stage_that_runs_past_its_budget_is_a_result_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    def slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(acceptance.subprocess, "run", slow)
    assert acceptance.default_run(tmp_path, cuda=False, quick=False, seconds=5) == {
        "ok": False,
        "error": "ran past its budget of 5 s",
    }


def test_the_summary_is_on_disk_after_every_stage(tmp_path: Path, monkeypatch) -> None:
    written = []
    monkeypatch.setattr(acceptance, "write_jpegs", lambda root, count: root)
    monkeypatch.setattr(acceptance, "run_bench", lambda *args: {"ok": False, "error": "no"})
    monkeypatch.setattr(acceptance, "default_run", lambda *args: {"ok": True, "epochs": 1})
    real = acceptance.write_summary

    def write_summary(path: Path, summary: dict, start: float) -> None:
        real(path, summary, start)
        written.append(sorted(json.loads(path.read_text())))

    monkeypatch.setattr(acceptance, "write_summary", write_summary)
    with pytest.raises(SystemExit) as stopped:
        acceptance.main(["--skip-tests", "--summary", str(tmp_path / "s.json"), "--keep", str(tmp_path / "w")])
    assert stopped.value.code == 1  # the bench stages failed
    assert "budgets" in written[0] and "default_run" not in written[0]  # before the first stage
    assert "default_run" in written[1] and "throughput_224" not in written[1] and "throughput_224" in written[2]
    assert len(written) == 8  # before the stages, after each of the six, and once at the end


def test_a_disk_that_fills_up_between_stages_is_a_warning_and_the_stages_go_on(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(acceptance, "write_jpegs", lambda root, count: root)
    monkeypatch.setattr(acceptance, "run_bench", lambda *args: {"ok": False, "error": "no"})
    monkeypatch.setattr(acceptance, "default_run", lambda *args: {"ok": True, "epochs": 1})
    real, calls = acceptance.write_atomically, []

    def write_atomically(path: Path, write) -> None:
        calls.append(path)
        if len(calls) > 2:  # before the stages and after the first: written; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(acceptance, "write_atomically", write_atomically)
    with pytest.raises(SystemExit) as stopped:
        acceptance.main(["--skip-tests", "--summary", str(tmp_path / "s.json"), "--keep", str(tmp_path / "w")])
    assert stopped.value.code == 1 and len(calls) == 8  # every stage ran (the bench stages failed)
    out, err = capsys.readouterr()
    assert set(json.loads(out.splitlines()[-1])) >= {"default_run", "loaders_jpegs"}  # the whole summary, printed
    warning = f"warning: --summary {tmp_path / 's.json'}: not updated (No space left on device); the lines printed"
    assert err.splitlines() == [warning + " hold every stage's figures"] * 6
    assert "default_run" in json.loads((tmp_path / "s.json").read_text())  # as it was after the first stage


def test_an_unwritable_summary_is_refused_before_any_stage_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(acceptance, "stages", lambda *args: pytest.fail("a stage ran"))
    (tmp_path / "file").write_text("")
    summary = tmp_path / "file" / "acceptance.json"  # under a file: no folder can be made there, even as root
    with pytest.raises(SystemExit) as stopped:
        acceptance.main(["--skip-tests", "--summary", str(summary)])
    expected = f"error: --summary {summary}: cannot be written (Not a directory); give a writable path"
    assert stopped.value.code == expected


def test_a_bench_pipeline_that_runs_past_its_timeout_is_one_error_line(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--dataset", "shapes", "--device", "cpu", "--timeout", "0.01"])
    assert stopped.value.code == "error: the ours run did not finish within --timeout 0.01 s"


def test_bench_repeats_its_timing_and_reports_the_median() -> None:
    shape = ["--dataset", "shapes", "--train-size", "32", "--batch-size", "8", "--image-size", "67"]
    timing = ["--steps", "1", "--warmup", "0", "--repeats", "3", "--device", "cpu", "--amp", "off"]
    args = bench.get_args([*shape, *timing])
    figures = bench.run_ours(args)
    runs = figures["images_per_second_runs"]
    assert len(runs) == 3 and figures["images_per_second"] == sorted(runs)[1]
    assert figures["precision"] == "fp32" and figures["matmul_tflops"] > 0


def test_stages_runs_only_the_stages_named(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(acceptance, "write_jpegs", lambda root, count: root)
    monkeypatch.setattr(acceptance, "run_bench", lambda *args: {"ok": True, "images_per_second": 1.0})
    monkeypatch.setattr(acceptance, "default_run", lambda *args: {"ok": True, "epochs": 1})
    argv = ["--stages", "default_run", "training_packed_vs_memory", "--summary", str(tmp_path / "s.json")]
    with pytest.raises(SystemExit) as stopped:
        acceptance.main([*argv, "--keep", str(tmp_path / "w")])
    assert stopped.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["stage"] for line in lines[1:-1]] == ["default_run", "training_packed_vs_memory"]
    with pytest.raises(SystemExit) as refused:  # a stage that does not exist: argparse's one line, exit 2
        acceptance.main(["--stages", "warmup"])
    assert refused.value.code == 2 and "invalid choice: 'warmup'" in capsys.readouterr().err


def test_the_tests_stage_counts_and_lists_the_failures_with_their_messages(monkeypatch) -> None:
    seen = {}

    def pytest_run(command, cwd, seconds, env=None):
        seen["command"], seen["env"] = command, env
        out = "..F.\nFAILED tests/test_x.py::test_y[cuda] - AssertionError: 3 != 4\n"
        out += "1 failed, 3 passed, 2 skipped in 9.1s\n"
        return subprocess.CompletedProcess(command, 1, out, ""), 9.5

    monkeypatch.setattr(acceptance, "run", pytest_run)
    result = acceptance.run_tests(cuda=False, quick=True, seconds=60)
    assert result["failed"] == 1 and result["passed"] == 3 and result["skipped"] == 2 and not result["ok"]
    assert result["failures"] == ["FAILED tests/test_x.py::test_y[cuda] - AssertionError: 3 != 4"]
    assert "-rfE" in seen["command"] and seen["env"]["COLUMNS"] == "400"  # the summary's lines, whole
