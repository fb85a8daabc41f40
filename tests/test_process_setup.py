"""How a process is set up: the backends' settings (train.py and bench.py alike), and rank 0 preparing the
data while the other torchrun processes wait, for as long as that takes."""

import datetime

import pytest
import torch

import bench
import engine


class Stop(Exception):
    pass


@pytest.fixture
def backends():
    """Leave cuDNN's and the deterministic flags as they were."""
    saved = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    yield
    torch.backends.cudnn.benchmark = saved[0]
    torch.use_deterministic_algorithms(saved[1])


@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_autotunes_unless_deterministic(deterministic: bool, backends) -> None:
    # Only flags are set: this runs on a machine without a GPU too.
    memory_format = engine.configure_device(torch.device("cuda"), deterministic)
    assert torch.backends.cudnn.benchmark is not deterministic
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    assert memory_format == torch.channels_last


@pytest.mark.parametrize("loader_only", [False, True])
def test_bench_sets_the_backends_up_as_train_py_does(loader_only: bool, tmp_path, monkeypatch) -> None:
    seen = []

    def configure_device(device: torch.device, deterministic: bool):  # records the call, then stops bench
        seen.append((device, deterministic))
        raise Stop

    monkeypatch.setattr(bench, "configure_device", configure_device)
    (tmp_path / "train" / "a").mkdir(parents=True)  # never read: the stop comes first
    argv = ["--loader-only", "--only", "stream", "--data", str(tmp_path)] if loader_only else ["--dataset", "shapes"]
    args = bench.get_args(["--device", "cpu", *argv])
    with pytest.raises(Stop):  # stopped before any data is read
        (bench.run_our_loader if loader_only else bench.run_ours)(args)
    assert seen == [(torch.device("cpu"), False)]


@pytest.mark.parametrize("rank", [0, 1])
def test_the_other_ranks_wait_for_rank_0_for_hours_not_minutes(rank: int, monkeypatch) -> None:
    events = []
    monkeypatch.setattr(engine.dist, "new_group", lambda **options: events.append(("group", options)) or "group")
    monkeypatch.setattr(engine.dist, "barrier", lambda group=None: events.append(("barrier", group)))
    result = engine.first_on_rank_0(lambda: events.append(("work", None)) or 42, rank, world_size=2)
    assert result == 42
    (_, options), *rest = events
    assert options["backend"] == "gloo" and options["timeout"] >= datetime.timedelta(hours=12)
    # rank 0 works first, then releases the others; they wait, then work (reading what it wrote)
    assert rest == ([("work", None), ("barrier", "group")] if rank == 0 else [("barrier", "group"), ("work", None)])


def test_a_single_process_just_works(monkeypatch) -> None:
    monkeypatch.setattr(engine.dist, "barrier", lambda **_: pytest.fail("no barrier without torchrun"))
    assert engine.first_on_rank_0(lambda: 7, 0, 1) == 7
