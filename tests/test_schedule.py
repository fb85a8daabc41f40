"""The learning-rate schedule (schedule.py) against the PyTorch schedulers train.py used before it,
step by step over whole runs, and the conversion of checkpoints that hold those schedulers."""

import math

import pytest
import torch

from schedule import Schedule, state_from_old_checkpoint

STEPS_PER_EPOCH, EPOCHS, WARMUP, LR = 7, 9, 10, 0.05


def torch_schedulers(kind: str) -> tuple[torch.optim.Optimizer, object, object]:
    """What train.py built before the Schedule object: a per-step and a per-epoch scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR, momentum=0.9)
    total = STEPS_PER_EPOCH * EPOCHS
    if kind == "onecycle":
        step = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=LR, total_steps=total, pct_start=min(0.5, WARMUP / total), anneal_strategy="linear",
            cycle_momentum=False, div_factor=25, final_div_factor=1e4,
        )  # fmt: skip
        return optimizer, step, None
    step = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=WARMUP)
    if kind == "plateau":
        epoch = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=1)
    else:
        epoch = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    return optimizer, step, epoch


# Validation top-1 per epoch: improves, stalls (the plateau rule fires twice), improves again.
VAL_TOP1 = [0.2, 0.4, 0.4, 0.39, 0.41, 0.41, 0.41, 0.5, 0.6]


def reference_rates(kind: str, checkpoint_after_epoch: int | None = None) -> tuple[list[float], dict | None]:
    """The rate of every step under the PyTorch schedulers, as the old loop stepped them; and an
    old-format checkpoint taken after `checkpoint_after_epoch` epochs."""
    optimizer, step_schedule, epoch_schedule = torch_schedulers(kind)
    rates, checkpoint, step = [], None, 0
    for epoch in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if kind == "onecycle" and step < STEPS_PER_EPOCH * EPOCHS or kind != "onecycle" and step < WARMUP:
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


def schedule(kind: str) -> Schedule:
    return Schedule(kind, LR, STEPS_PER_EPOCH * EPOCHS, WARMUP, lr_step=3, lr_gamma=0.1, patience=1)


def rates_of(schedule: Schedule, first_epoch: int = 0, end_epoch: int = EPOCHS) -> list[float]:
    """The rate of every step of epochs first_epoch to end_epoch - 1, as train.py steps the schedule."""
    rates = []
    for epoch in range(first_epoch, end_epoch):
        for _ in range(STEPS_PER_EPOCH):
            rates.append(schedule.lr())
            schedule.step += 1
        schedule.end_epoch(VAL_TOP1[epoch])
    return rates


@pytest.mark.parametrize("kind", ["step", "plateau", "onecycle"])
def test_schedule_gives_the_rates_of_the_pytorch_schedulers(kind: str) -> None:
    expected, _ = reference_rates(kind)
    assert rates_of(schedule(kind)) == pytest.approx(expected, rel=1e-9)
    if kind == "plateau":  # the rule fired: two reductions in this run
        assert min(expected) == pytest.approx(LR / 100)


@pytest.mark.parametrize("kind", ["step", "plateau", "onecycle"])
def test_schedule_state_round_trips_mid_run(kind: str) -> None:
    straight = rates_of(schedule(kind))
    first = schedule(kind)
    head = rates_of(first, end_epoch=4)
    second = schedule(kind)
    second.load_state_dict(first.state_dict())
    assert head + rates_of(second, first_epoch=4) == straight


@pytest.mark.parametrize("kind", ["step", "plateau", "onecycle"])
@pytest.mark.parametrize("after", [1, 5])
def test_checkpoints_with_pytorch_schedulers_resume_on_the_same_rates(kind: str, after: int) -> None:
    expected, old_checkpoint = reference_rates(kind, checkpoint_after_epoch=after)
    resumed = schedule(kind)
    resumed.load_state_dict(state_from_old_checkpoint(old_checkpoint, LR, WARMUP))
    assert rates_of(resumed, first_epoch=after) == pytest.approx(expected[after * STEPS_PER_EPOCH :], rel=1e-9)


def test_warmup_starts_at_a_hundredth_and_reaches_the_peak() -> None:
    s = Schedule("step", 0.01, 1000, 200)
    assert s.lr() == pytest.approx(1e-4)
    s.step = 200
    assert s.lr() == 0.01
    assert not math.isnan(Schedule("step", 0.01, 10, 0).lr())
