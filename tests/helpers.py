"""What the tests share besides the fixtures (conftest.py): the scripts' environment and how they are run,
folders made once for the session, the devices present, and small files the tests write.

Kept out of conftest.py, which pytest-xdist's controller process imports too: that process runs no test, and
importing torch there (4-7 s on the 2-core machines) would delay every worker's start."""

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import ROOT  # which has put it on sys.path
from filelock import FileLock  # a dependency of torch
from forked_scripts import ScriptServer
from PIL import Image

from presets import EvalPreset

SHARED_DATA = ROOT.parent / "shared" / "data"


# With pytest-xdist (`pytest -n 2`), the cores are shared between the workers: one thread each, for the tests
# (conftest.py sets it) and for the scripts they start, since idle OpenMP threads waiting on a busy core stall.
THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# The scripts under test run in this process's environment (PATH, LD_LIBRARY_PATH, CUDA_VISIBLE_DEVICES, the
# GPU driver's variables...) less what would change what they do or print: torchrun's variables (a suite
# started inside a torchrun job must not make the scripts join it), pytest's, the terminal's and the locale
# (they write to pipes, in the C locale), tqdm's defaults, and Python's switches that print more on stderr,
# run code first, skip their asserts or take their own folder off sys.path.
NOT_INHERITED = {
    *("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE"),
    *("ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MKL_NUM_THREADS"),
    *("TERM", "COLUMNS", "LINES", "LANG", "LANGUAGE"),
    *("PYTHONWARNINGS", "PYTHONDEVMODE", "PYTHONVERBOSE", "PYTHONPROFILEIMPORTTIME", "PYTHONTRACEMALLOC"),
    *("PYTHONMALLOC", "PYTHONINSPECT", "PYTHONSTARTUP", "PYTHONOPTIMIZE", "PYTHONSAFEPATH"),
}
NOT_INHERITED_PREFIXES = ("TORCHELASTIC_", "PYTEST_", "LC_", "TQDM_")
SCRIPT_OVERRIDES = {"OMP_NUM_THREADS": THREADS, "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}


def script_env() -> dict[str, str]:
    """The environment of the scripts under test: this process's, as it is now, with the changes above."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in NOT_INHERITED and not name.startswith(NOT_INHERITED_PREFIXES)
    }
    return {**inherited, **SCRIPT_OVERRIDES}


SCRIPT_ENV = script_env()  # for the tests that start the scripts themselves (torchrun, Popen)


SERVER: list[ScriptServer] = []  # this worker's script server, started by the first run()


def run(
    script: str, *args: str, cwd: Path, check: bool = True, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run one of the repository's scripts in a process of its own, as a user would (but with no terminal),
    in the scripts' environment (script_env) with `env` added: forked from a process that has imported torch
    already (forked_scripts.py), or a new interpreter where that would differ."""
    argv, env = [str(ROOT / script), *args], {**script_env(), **(env or {})}
    if not SERVER and os.environ.get("ALEXNET_TEST_SUBPROCESS") != "1":
        SERVER.append(ScriptServer(env))
    if SERVER and SERVER[0].can_run(env):
        result = SERVER[0].run(argv, cwd, env, timeout)
    else:
        command = [sys.executable, *argv]
        result = subprocess.run(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    if check:
        assert result.returncode == 0, f"{script} {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def close_script_servers() -> None:
    """Stop this worker's script server (at the end of the session)."""
    while SERVER:
        SERVER.pop().close()


# --- Made once for the whole session ---------------------------------------------------------------------


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """A folder that `make(folder)` fills once for the whole session, whichever pytest-xdist worker needs it
    first (the other waits for it): to be read only. Copy what a test changes (copy_run)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, which holds each worker's; pytest removes it as it does theirs
    folder = root / "shared" / name
    folder.parent.mkdir(exist_ok=True)
    done = folder.parent / f"{name}.done"
    with FileLock(folder.parent / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def shared_run(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Path:
    """`python train.py *args --name NAME`, run once for the session in a folder of its own: its run
    directory, FOLDER/runs/NAME (the only run there), to be read only (copy_run it to resume it)."""
    work = shared_folder(tmp_path_factory, name, lambda folder: run("train.py", *args, "--name", name, cwd=folder))
    return work / "runs" / name


def copy_run(run_dir: Path, work: Path, name: str | None = None) -> Path:
    """A copy of the run directory `run_dir` at work/runs/NAME (run_dir's own name by default)."""
    copy = work / "runs" / (name or run_dir.name)
    shutil.copytree(run_dir, copy)
    return copy


# The built-in shapes, tiny: 64 training images in batches of 16 (4 steps an epoch, every step logged), and no
# pictures (3-7 s a run here; test_scripts.py checks every picture of a run, test_plots.py each alone).
TINY_SHAPES = ["--train-size", "64", "--val-size", "16", "--batch-size", "16", "--log-interval", "1", "--no-plots"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, checked to be one that decodes whole."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # the whole file decodes, not just its header
        return image.size


def gpus() -> list:
    """The accelerators, as pytest params skipped where absent (as torchvision's tests do): the same
    `pytest` on a GPU machine runs them there. Marked `gpu`, so that `pytest -m gpu` runs just these."""
    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    return [
        pytest.param(name, marks=[pytest.mark.gpu, pytest.mark.skipif(not there, reason=f"no {name.upper()} here")])
        for name, there in present.items()
    ]


def devices() -> list:
    """The CPU and every accelerator (see gpus)."""
    return ["cpu", *gpus()]


def save_checkpoint_file(path: Path, model: torch.nn.Module, classes: list[str], preprocess: dict) -> Path:
    """A train.py-style checkpoint with what inference needs: weights, model_config, classes, preprocess."""
    checkpoint = {
        "model": model.state_dict(),
        "model_config": model.config,
        "classes": classes,
        "preprocess": preprocess,
    }
    torch.save(checkpoint, path)
    return path


# A tiny model's checkpoint, shared by the inference and export tests. resize_size - image_size is
# even, so that the centre crop sits exactly in the middle.
CHECKPOINT_CLASSES = ["a", "b", "c"]
CHECKPOINT_PRESET = EvalPreset(image_size=67, resize_size=77, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.3], in_channels=3)


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """inference.main(args) in this process: exit status, stdout, stderr."""
    import inference

    try:
        inference.main(list(args))
        status = 0
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def fill_the_disk_at(monkeypatch: pytest.MonkeyPatch, name: str, nth: int) -> None:
    """From the `nth` time on that atomic_files opens a temporary file for `name`, the file is /dev/full (every
    write fails with ENOSPC): the disk fills up at that moment. Calls for several names add up."""
    import builtins

    import atomic_files

    opened, previous = [], getattr(atomic_files, "open", builtins.open)

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        if str(file).endswith(".tmp") and Path(file).name.startswith(name):
            opened.append(file)
            if len(opened) >= nth:
                return builtins.open("/dev/full", mode, *args, **kwargs)
        return previous(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic_files, "open", open_on_a_full_disk, raising=False)


def _pt2_archive() -> bool:
    from export import pt2_archive_supported

    return pt2_archive_supported()


# torch 2.5 (the floor) writes .pt2 files in its older, pickled layout: refused there (test_export's
# test_a_torch_without_the_pt2_archive_refuses_pt2_in_one_line), so the tests that make one need a newer torch.
needs_pt2_archive = pytest.mark.skipif(
    not _pt2_archive(), reason="this torch writes .pt2 files in the older, pickled layout, which is refused"
)
