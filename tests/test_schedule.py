"""The learning-rate schedule (schedule.py): PyTorch's schedulers on train.py's fused SGD, step by step over whole
runs against the schedulers as train.py stepped them before; exact resumption through a checkpoint file; the flags
given again to --resume; and the checkpoints of the two earlier versions (PyTorch's scheduler state dicts, then the
Schedule's own counts)."""

import math
import warnings
from pathlib import Path

import pytest
import torch
from helpers import copy_run, run

from checkpoints import save_checkpoint
from errors import CheckpointError
from schedule import Schedule, state_from_old_checkpoint

STEPS_PER_EPOCH, EPOCHS, WARMUP, LR = 7, 9, 10, 0.05
KINDS = ["step", "plateau", "onecycle"]
# Validation top-1 per epoch: improves, stalls (the plateau rule fires twice), improves again.
VAL_TOP1 = [0.2, 0.4, 0.4, 0.39, 0.41, 0.41, 0.41, 0.5, 0.6, 0.6, 0.6, 0.6]
LONG_WARMUP = 40  # past the first step decay (21 steps) and the first time the plateau rule fires (28)


def torch_schedulers(kind: str, warmup: int = WARMUP) -> tuple[torch.optim.Optimizer, object, object]:
    """What train.py built before the Schedule object: a per-step and a per-epoch scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR, momentum=0.9)
    total = STEPS_PER_EPOCH * EPOCHS
    if kind == "onecycle":
        step = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=LR, total_steps=total, pct_start=min(0.5, warmup / total), anneal_strategy="linear",
            cycle_momentum=False, div_factor=25, final_div_factor=1e4,
        )  # fmt: skip
        return optimizer, step, None
    step = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    if kind == "plateau":
        epoch = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=1)
    else:
        epoch = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    return optimizer, step, epoch


def reference_rates(
    kind: str, checkpoint_after_epoch: int | None = None, warmup: int = WARMUP
) -> tuple[list[float], dict | None]:
    """The rate of every step under the PyTorch schedulers, as the old loop stepped them; and an
    old-format checkpoint taken after `checkpoint_after_epoch` epochs."""
    optimizer, step_schedule, epoch_schedule = torch_schedulers(kind, warmup)
    rates, checkpoint, step = [], None, 0
    for epoch in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if kind == "onecycle" and step < STEPS_PER_EPOCH * EPOCHS or kind != "onecycle" and step < warmup:
                step_schedule.step()
            step += 1
        if isinstance(epoch_schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            epoch_schedule.step(VAL_TOP1[epoch])
        elif epoch_schedule is not None:
            epoch_schedule.step()
        if epoch + 1 == checkpoint_after_epoch:
            checkpoint = {
                "epoch": epoch + 1,
                "optimizer": optimizer.state_dict(),
                "step_schedule": step_schedule.state_dict(),
                "epoch_schedule": epoch_schedule.state_dict() if epoch_schedule is not None else None,
            }
    return rates, checkpoint


def fused_sgd(lr: float = LR, momentum: float = 0.9) -> torch.optim.SGD:
    """The optimiser train.py builds (fused on the CPU too), on one weight."""
    weight = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    return torch.optim.SGD([weight], lr=lr, momentum=momentum, fused=True)


def schedule(kind: str, warmup: int = WARMUP, lr: float = LR, epochs: int = EPOCHS) -> Schedule:
    return Schedule(fused_sgd(lr), kind, lr, epochs, STEPS_PER_EPOCH, warmup, lr_step=3, lr_gamma=0.1, patience=1)


def train(schedule: Schedule, first_step: int = 0, end_step: int | None = None) -> list[float]:
    """The rate of every step from first_step to end_step - 1 (counted from the run's start; None: to its end), as
    train.py's loop steps: the optimiser at schedule.lr(), then after_step(), and end_epoch after an epoch's last."""
    end_step = schedule.epochs * STEPS_PER_EPOCH if end_step is None else end_step
    (weight,) = schedule.optimizer.param_groups[0]["params"]
    rates = []
    for step in range(first_step, end_step):
        rates.append(schedule.lr())
        weight.grad = torch.ones_like(weight)
        schedule.optimizer.step()
        schedule.after_step()
        if (step + 1) % STEPS_PER_EPOCH == 0:
            schedule.end_epoch(VAL_TOP1[step // STEPS_PER_EPOCH])
    return rates


def resumed(checkpoint: dict, kind: str, warmup: int = WARMUP, lr: float = LR, epochs: int = EPOCHS) -> Schedule:
    """A new process's schedule, loaded as train.py's restore does: the optimiser, then the schedule."""
    schedule_ = schedule(kind, warmup, lr, epochs)
    schedule_.optimizer.load_state_dict(checkpoint["optimizer"])
    schedule_.load_state_dict(checkpoint.get("schedule") or state_from_old_checkpoint(checkpoint, lr, warmup))
    return schedule_


@pytest.mark.parametrize("warmup", [WARMUP, LONG_WARMUP])
@pytest.mark.parametrize("kind", KINDS)
def test_the_schedulers_give_the_rates_train_py_had(kind: str, warmup: int) -> None:
    expected, _ = reference_rates(kind, warmup=warmup)
    rates = train(schedule(kind, warmup))
    assert rates == expected
    assert rates[0] == pytest.approx(LR / 25 if kind == "onecycle" else LR / 100)
    if kind == "plateau":  # the rule fired: two reductions in this run
        assert min(expected) == pytest.approx(LR / 100)


def test_the_fused_optimiser_steps_at_the_scheduled_rate() -> None:
    optimizer = fused_sgd(momentum=0.0)  # without momentum, each step moves the weight by the rate
    (weight,) = optimizer.param_groups[0]["params"]
    run = Schedule(optimizer, "step", LR, EPOCHS, STEPS_PER_EPOCH, WARMUP)
    for _ in range(2 * WARMUP):
        rate, before = run.lr(), weight.item()
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        assert before - weight.item() == pytest.approx(rate, rel=1e-12)
        run.after_step()
    assert run.lr() == pytest.approx(LR, rel=1e-12)  # (LinearLR multiplies its way there: to the last bits)


@pytest.mark.filterwarnings("error")  # (PyTorch's warning that a scheduler stepped before the optimiser: not here)
@pytest.mark.parametrize("stop", [4 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH + 3], ids=["between-epochs", "mid-epoch"])
@pytest.mark.parametrize("warmup", [WARMUP, LONG_WARMUP])
@pytest.mark.parametrize("kind", KINDS)
def test_a_resumed_run_gets_every_rate_of_an_uninterrupted_one(
    kind: str, warmup: int, stop: int, tmp_path: Path
) -> None:
    straight = train(schedule(kind, warmup))
    first = schedule(kind, warmup)
    head = train(first, end_step=stop)
    # Through a checkpoint file, read as train.py reads them: plain numbers, lists and dicts only.
    torch.save({"optimizer": first.optimizer.state_dict(), "schedule": first.state_dict()}, tmp_path / "last.pt")
    second = resumed(torch.load(tmp_path / "last.pt", weights_only=True), kind, warmup)
    assert second.step == stop and second.epoch == stop // STEPS_PER_EPOCH
    assert head + train(second, first_step=stop) == straight


@pytest.mark.parametrize("kind", KINDS)
def test_flags_given_again_on_resume_win(kind: str) -> None:
    """A new --lr, or more --epochs, on --resume: the rest of the run is that of a run started with them."""
    first = schedule(kind)
    train(first, end_step=30)
    checkpoint = {"optimizer": first.optimizer.state_dict(), "schedule": first.state_dict()}
    assert train(resumed(checkpoint, kind, lr=10 * LR), first_step=30) == train(schedule(kind, lr=10 * LR))[30:]
    train(first, first_step=30)  # to the end of its 9 epochs, then 3 more
    checkpoint = {"optimizer": first.optimizer.state_dict(), "schedule": first.state_dict()}
    longer = train(resumed(checkpoint, kind, epochs=EPOCHS + 3), first_step=EPOCHS * STEPS_PER_EPOCH)
    assert longer == train(schedule(kind, epochs=EPOCHS + 3))[EPOCHS * STEPS_PER_EPOCH :]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("after", [1, 5])
def test_checkpoints_with_pytorch_schedulers_resume_on_the_same_rates(kind: str, after: int) -> None:
    expected, old_checkpoint = reference_rates(kind, checkpoint_after_epoch=after)
    rates = train(resumed(old_checkpoint, kind), first_step=after * STEPS_PER_EPOCH)
    assert rates == pytest.approx(expected[after * STEPS_PER_EPOCH :], rel=1e-9)


def counts_before_the_schedulers(kind: str, steps: int) -> dict:
    """What the Schedule of the version before (train.py setting the rate it computed) saved after `steps` steps:
    its counts, worked out here from its rules."""
    epochs, reductions, best, bad_epochs = steps // STEPS_PER_EPOCH, 0, -math.inf, 0
    for top1 in VAL_TOP1[:epochs] if kind == "plateau" else []:
        best, bad_epochs = (top1, 0) if top1 > best * (1 + 1e-4) else (best, bad_epochs + 1)
        if bad_epochs > 1:  # patience 1
            reductions, bad_epochs = reductions + 1, 0
    return {"step": steps, "epoch": epochs, "reductions": reductions, "best": best, "bad_epochs": bad_epochs}


def rate_before_the_schedulers(kind: str, state: dict, warmup: int) -> float:
    """The rate that version gave the next step, by its formula."""
    step, total = state["step"], STEPS_PER_EPOCH * EPOCHS
    if kind == "onecycle":
        peak_step = min(0.5, warmup / total) * total - 1
        if step <= peak_step:
            return LR / 25 + (LR - LR / 25) * step / peak_step
        return LR + (LR / 25e4 - LR) * (step - peak_step) / (total - 1 - peak_step)
    decay = 0.1 ** state["reductions"] if kind == "plateau" else 0.1 ** (state["epoch"] // 3)
    return LR * (0.01 + 0.99 * min(step, warmup) / warmup) * decay


@pytest.mark.parametrize("stop", [5, 4 * STEPS_PER_EPOCH, 5 * STEPS_PER_EPOCH + 3])
@pytest.mark.parametrize("warmup", [WARMUP, LONG_WARMUP])
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_of_the_schedule_before_the_schedulers_resume_on_the_same_rates(
    kind: str, warmup: int, stop: int
) -> None:
    state = counts_before_the_schedulers(kind, stop)
    # That version set the rate of each step itself: its optimiser kept the last one, which counts for nothing now.
    optimizer = fused_sgd(lr=123.0).state_dict()
    second = resumed({"optimizer": optimizer, "schedule": state}, kind, warmup)
    assert second.lr() == pytest.approx(rate_before_the_schedulers(kind, state, warmup), rel=1e-12)
    expected, _ = reference_rates(kind, warmup=warmup)
    assert train(second, first_step=stop) == pytest.approx(expected[stop:], rel=1e-9)


@pytest.mark.parametrize("old_format", ["pytorch-schedulers", "counts"])
def test_a_run_resumed_again_and_again_from_an_old_checkpoint_keeps_its_plateau_reductions(
    old_format: str, tmp_path: Path
) -> None:
    """The old checkpoints said how many times the plateau rule fired, not after which epochs: the resumed run
    must save those reductions too, or the run resumed from its own checkpoint would lose them."""
    stop = 7 * STEPS_PER_EPOCH  # after the plateau rule fired twice
    expected, old_checkpoint = reference_rates("plateau", checkpoint_after_epoch=7)
    if old_format == "counts":
        state = counts_before_the_schedulers("plateau", stop)
        old_checkpoint = {"optimizer": fused_sgd(lr=123.0).state_dict(), "schedule": state}
    current, rates = resumed(old_checkpoint, "plateau"), []
    assert current.lr() == pytest.approx(LR / 100, rel=1e-9)  # both reductions
    for first, end in ((stop, stop + 4), (stop + 4, stop + 9), (stop + 9, None)):  # mid-epoch, next epoch, the end
        rates += train(current, first_step=first, end_step=end)
        checkpoint = {"optimizer": current.optimizer.state_dict(), "schedule": current.state_dict()}
        torch.save(checkpoint, tmp_path / "last.pt")
        current = resumed(torch.load(tmp_path / "last.pt", weights_only=True), "plateau")
    assert rates == pytest.approx(expected[7 * STEPS_PER_EPOCH :], rel=1e-9)
    assert current.state_dict()["reductions"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_warning_from_the_training_loop_is_shown_once(kind: str) -> None:
    """The schedule keeps PyTorch's note on the order of steps off the terminal only where it can come: keeping it
    off elsewhere would reset Python's record of the warnings shown, and a warning of the loop would show each step."""
    run = schedule(kind)
    (weight,) = run.optimizer.param_groups[0]["params"]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        for _ in range(2 * WARMUP):
            warnings.warn(
                "a note from the training loop", UserWarning, stacklevel=1
            )  # (one place in the code, every step)
            weight.grad = torch.ones_like(weight)
            run.optimizer.step()
            run.after_step()
            if run.step % STEPS_PER_EPOCH == 0:
                run.end_epoch(0.5)
    assert [str(warning.message) for warning in shown] == ["a note from the training loop"]


def test_warmup_starts_at_a_hundredth_and_reaches_the_peak() -> None:
    run = Schedule(fused_sgd(0.01), "step", 0.01, 5, 200, 200)
    assert run.lr() == pytest.approx(1e-4)
    for _ in range(200):
        run.after_step()
    assert run.lr() == pytest.approx(0.01, rel=1e-12)
    assert Schedule(fused_sgd(0.01), "step", 0.01, 1, 10, 0).lr() == 0.01


@pytest.mark.parametrize("warmup, epochs, steps_per_epoch", [(0, EPOCHS, 7), (1, EPOCHS, 7), (5, 1, 2)])
def test_a_one_cycle_whose_warm_up_is_one_step_decays_linearly_from_the_peak(
    warmup: int, epochs: int, steps_per_epoch: int
) -> None:
    """OneCycleLR would divide by zero there; the rate of every step is that of the line from the peak (step 0)
    to lr/25e4 (the last step)."""
    run = Schedule(fused_sgd(), "onecycle", LR, epochs, steps_per_epoch, warmup)
    total = epochs * steps_per_epoch
    rates = []
    for _ in range(total):
        rates.append(run.lr())
        run.after_step()
    assert rates == pytest.approx([LR + (LR / 25e4 - LR) * step / (total - 1) for step in range(total)], rel=1e-9)
    assert Schedule(fused_sgd(), "onecycle", LR, 1, 1, warmup).lr() == pytest.approx(LR / 25e4)  # a one-step run


GOOD_STATE = {"step": 30, "epoch": 4, "reduced_after": [4], "reductions": 1, "best": 0.4, "bad_epochs": 0}


@pytest.mark.parametrize(
    "change, named",
    [
        ({"epoch": 10**12}, "epoch = 1000000000000 "),  # (its replay would take years)
        ({"step": -1}, "step = -1 "),
        ({"step": 3.5}, "step = 3.5 "),
        ({"bad_epochs": True}, "bad_epochs = True "),
        ({"reduced_after": "4\x1b[31m"}, "reduced_after = '4\\\\x1b[31m' "),  # (repr, then escaped: no ESC)
        ({"reduced_after": [4] * 100}, "reduced_after = [4, 4, 4"),
        ({"reductions": 10**9}, "reductions = 1000000000 "),
        ({"best": float("nan")}, "best = nan "),
        ({"best": "0.4"}, "best = '0.4' "),
        ({"step": 10**30}, "step = 1000000000000000000000000000000 "),  # (past any run's steps)
        ({"epoch": 10**5000}, "epoch = <a number of about 5001 digits> "),  # (repr refuses ints of over 4300 digits)
        ({"bad_epochs": 10**5000}, "bad_epochs = <a number of about 5001 digits> "),
        ({"unplaced": 10}, "unplaced = 10 "),  # (at most one reduction an epoch)
        ({"reduced_after": [2, 2]}, "reduced_after = [2, 2] "),
        ({"reduced_after": [5]}, "reduced_after = [5] "),  # (after an epoch not yet run)
    ],
)
def test_a_schedule_state_no_run_could_have_written_is_one_error_line(change: dict, named: str) -> None:
    run = schedule("plateau")
    with pytest.raises(CheckpointError) as error:
        run.load_state_dict({**GOOD_STATE, **change})
    assert str(error.value).startswith(f"its schedule state's {named}"), str(error.value)
    assert str(error.value).endswith("is not one a run of 9 epoch(s) can go on from")
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value)
    for state in ({"step": 3}, [1, 2]):
        with pytest.raises(CheckpointError, match="^its schedule state is not a table of step, epoch, best"):
            run.load_state_dict(state)
    with pytest.raises(CheckpointError, match=r"^its schedule \(PyTorch's schedulers' state, step_schedule\) cannot"):
        state_from_old_checkpoint({"epoch": 1, "step_schedule": [1]}, LR, WARMUP)


@pytest.mark.parametrize(
    "group", [{"lr": 1e-320}, {"lr": LR, "initial_lr": math.inf}], ids=["lr-1e-320", "initial-lr-inf"]
)
def test_an_old_checkpoint_whose_rates_no_run_had_is_one_error_line(group: dict) -> None:
    """The number of plateau reductions comes from the ratio of the rates: one that is no number is refused."""
    _, checkpoint = reference_rates("plateau", checkpoint_after_epoch=5)
    checkpoint["optimizer"]["param_groups"][0].update(group)
    with pytest.raises(CheckpointError) as error:
        resumed(checkpoint, "plateau")
    assert str(error.value) == (
        "its schedule (PyTorch's schedulers' state, step_schedule) cannot be read "
        "(OverflowError: cannot convert float infinity to integer)"
    )


@pytest.mark.slow
def test_train_py_refuses_a_checkpoint_with_a_schedule_state_no_run_could_have_written(
    one_epoch_run: Path, tmp_path: Path
) -> None:
    run_dir = copy_run(one_epoch_run, tmp_path, "edited")  # `train.py *TINY_SHAPES --epochs 1`
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    checkpoint.pop("checksum")
    checkpoint["schedule"]["epoch"] = 10**12
    save_checkpoint(checkpoint, run_dir / "last.pt")  # with its checksum made again: only the check for sense is left
    before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    result = run("train.py", "--resume", "runs/edited", "--epochs", "2", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --resume {Path('runs/edited/last.pt')}: its schedule state's epoch = 1000000000000 is not one a run "
        "of 2 epoch(s) can go on from; start a new run"
    ]
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == before
