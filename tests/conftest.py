"""Shared test setup: the repository root on sys.path, small thread counts, deterministic seeds, runs and a
checkpoint made once for the whole session, and the longest tests handed out first. What the tests import
(running the scripts, the scripts' environment, small files) is in helpers.py.

pytest-xdist's controller process imports this file too, and runs no test: torch and the repository's modules
are imported where a fixture needs them, not at the top (importing them here delayed every worker by 4-7 s on
the 2-core machines)."""

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from alexnet import AlexNet

# The suite saves dozens of checkpoints and never cuts the power: no fsync after each file (atomic_files.py),
# in this process and in the scripts it starts (they inherit it). ALEXNET_SKIP_FSYNC=0 pytest ... keeps it.
os.environ.setdefault("ALEXNET_SKIP_FSYNC", "1")


@pytest.fixture(scope="session", autouse=True)
def worker_setup() -> Iterator[None]:
    """Each worker's share of the cores (helpers.THREADS) for the tests it runs; its script server stopped at
    the end."""
    import torch
    from helpers import THREADS, close_script_servers

    torch.set_num_threads(int(THREADS))
    yield
    close_script_servers()


@pytest.fixture(autouse=True)
def seeded() -> None:
    import torch

    torch.manual_seed(0)


# --- Made once for the whole session ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`train.py *TINY_SHAPES --epochs 1`, trained once for the session: the run directory (read only)."""
    from helpers import TINY_SHAPES, shared_run

    return shared_run(tmp_path_factory, "one-epoch", *TINY_SHAPES, "--epochs", "1")


@pytest.fixture(scope="session")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A train.py-style checkpoint of a 3-class AlexNet (the keys inference needs), read only."""
    import torch
    from helpers import CHECKPOINT_CLASSES, CHECKPOINT_PRESET, save_checkpoint_file

    from alexnet import AlexNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "best.pt"
    model = AlexNet(num_classes=len(CHECKPOINT_CLASSES))
    yield save_checkpoint_file(path, model, CHECKPOINT_CLASSES, asdict(CHECKPOINT_PRESET))
    shutil.rmtree(path.parent)


@pytest.fixture(scope="module")
def loaded(checkpoint_file: Path) -> tuple["AlexNet", dict]:
    from checkpoints import load_checkpoint

    return load_checkpoint(checkpoint_file)


# --- The order the tests are handed out in ---------------------------------------------------------------

# With `-n 2`, pytest-xdist hands the tests out in the order collected; by default it sends each worker a
# quarter of its share up front, in one block, which would leave all the long tests to one worker. Here it
# sends them one at a time (--maxschedchunk 1) to whichever worker is free, each worker holding one test in
# hand besides the one it runs: the longest tests go out first, the other end-to-end ones next, the quick
# ones last, to even out the end. Prefixes of test ids; the second is held by the first test's worker.
LONGEST_FIRST = (
    "tests/test_acceptance.py::test_acceptance_command_runs_in_its_no_cuda_mode",
    "tests/test_real_folders.py::test_same_seed_same_run_with_or_without_the_decode_cache_and_any_workers",
    "tests/test_pipeline.py::test_bf16_and_channels_last_follow_the_fp32_loss_trajectory[bf16]",
    "tests/test_distributed.py::test_two_processes_write_one_run_with_exact_validation_and_resume_in_one",
    "tests/test_pipeline.py::test_bf16_and_channels_last_follow_the_fp32_loss_trajectory",
    "tests/test_reliability.py::test_signal_saves_a_checkpoint_that_resumes_exactly",
    "tests/test_distributed.py::test_one_step_on_two_processes_equals_one_process_with_the_same_global_batch",
    "tests/test_devices.py::test_resume_with_deterministic_equals_an_uninterrupted_run",
    "tests/test_reliability.py::test_resume_under_another_global_batch_is_refused_where_it_would_mislead",
    "tests/test_reliability.py::test_resume_after_an_epoch_is_bit_identical",
    "tests/test_pipeline.py::test_bench_json_on_a_tiny_folder",
    "tests/test_shapes.py::test_a_linear_model_on_raw_pixels_does_poorly",  # the longest of -m "not slow"
)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("dist", "no") == "load" and config.getoption("maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1  # (unless given on the command line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process runs them all: the order changes nothing

    def rank(item: pytest.Item) -> int:
        first = [i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)]
        return first[0] if first else len(LONGEST_FIRST) + (item.get_closest_marker("slow") is None)

    items.sort(key=rank)  # stable: in collection order otherwise
