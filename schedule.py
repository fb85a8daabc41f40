"""The learning-rate schedule: PyTorch's schedulers (torch.optim.lr_scheduler) setting the rate of the
training's own optimiser, and the counts a checkpoint keeps to set them up again.

    >>> schedule = Schedule(optimizer, "step", peak_lr=0.01, epochs=4, steps_per_epoch=200, warmup_steps=200)
    >>> schedule.lr()                  # the rate of the next step, the optimiser's: lr / 100 at step 0
    >>> schedule.after_step()          # after each optimiser step (train.py's train_one_epoch)
    >>> schedule.end_epoch(val_top1)   # after each epoch: the step decay, or the plateau rule

Kinds:
- "step": LinearLR, a warm-up over `warmup_steps` optimiser steps from lr/100 to lr, then StepLR: lr x lr_gamma
  every `lr_step` epochs;
- "plateau": the same warm-up, then ReduceLROnPlateau ("max" mode): lr / 10 whenever validation top-1 has not
  improved (by 1e-4, relative) for more than `patience` epochs (the paper's rule);
- "onecycle": OneCycleLR, linear from lr/25 up to lr over `warmup_steps` (at most half the run), then linear down to
  lr/25e4 at the last step; no momentum cycling.

Our own code, where a scheduler cannot do the job:
- A checkpoint keeps counts (steps, epochs, the plateau's best), not the schedulers' state dicts, because the flags
  given again to --resume win (a new --lr, more --epochs) and LinearLR and StepLR only scale the rate they find,
  so load_state_dict builds the schedulers for this run's flags and steps them again, in the order the run did,
  which gives the interrupted run's rate to the bit.
- ReduceLROnPlateau cannot step again without the validation scores, so that replay divides the rate by 10 itself
  after the epochs where the rule fired (the state lists them), and once for each reduction of an older checkpoint
  that did not say when (the state counts them as "unplaced", so every later checkpoint keeps them too).
- OneCycleLR divides by zero when its warm-up is a single step (--warmup-steps 0 or 1, or a run of two steps), so
  such a run decays linearly from lr with LinearLR instead.
"""

import math
import re

import torch
from torch.optim.lr_scheduler import LinearLR, LRScheduler, OneCycleLR, ReduceLROnPlateau, StepLR

from display_text import printable, shown
from errors import CheckpointError, library_warnings_off

SCHEDULES = ("step", "onecycle", "plateau")
START, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.01, 25.0, 1e4  # the warm-up's first factor; OneCycleLR's divisors
# PyTorch warns when a scheduler steps before the optimiser has stepped in this process: a restore's replay does,
# and so does the first step after fp16 loss scaling skipped the optimiser's; neither skips a rate here.
STEP_ORDER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")
STATE_KEYS = ("step", "epoch", "best", "bad_epochs")  # what every version's state holds
# No run takes this many optimiser steps (a million a second for 285 years). The steps of an epoch give no tighter
# bound: a run may go on under a larger global batch or a smaller --max-steps, with fewer steps an epoch than it took.
MOST_STEPS = 2**53


class Schedule:
    """The rate of every optimiser step of a run of `epochs` x `steps_per_epoch` steps, set in `optimizer`."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, kind: str, peak_lr: float, epochs: int, steps_per_epoch: int,
        warmup_steps: int, lr_step: int = 6, lr_gamma: float = 0.1, patience: int = 4,
    ) -> None:  # fmt: skip
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}: one of {', '.join(SCHEDULES)}")
        self.optimizer, self.kind, self.peak_lr = optimizer, kind, peak_lr
        self.epochs, self.steps_per_epoch, self.warmup_steps = epochs, steps_per_epoch, warmup_steps
        self.lr_step, self.lr_gamma, self.patience = lr_step, lr_gamma, patience
        self.step = 0  # optimiser steps taken
        self.epoch = 0  # epochs completed
        self.reduced_after: list[int] = []  # plateau: the epochs after which the rate was divided by 10
        self.unplaced = 0  # plateau: the reductions of an older checkpoint, which did not say after which epochs
        self.build()

    def build(self) -> None:
        """The schedulers at step 0, for this run's settings (they set the optimiser's rate to that of step 0)."""
        for group in self.optimizer.param_groups:  # (a loaded optimiser holds the rates of the run it came from)
            group["lr"] = self.peak_lr
            group.pop("initial_lr", None)
        total = self.epochs * self.steps_per_epoch
        self.per_epoch: LRScheduler | ReduceLROnPlateau | None = None
        if self.kind == "onecycle":
            pct_start = min(0.5, max(self.warmup_steps, 1) / total)
            self.per_step_until = total - 1  # the rate of the last step stays
            if pct_start * total - 1 != 0:  # (OneCycleLR's end of the warm-up)
                self.per_step: LRScheduler = OneCycleLR(
                    self.optimizer, self.peak_lr, total_steps=total, pct_start=pct_start, anneal_strategy="linear",
                    cycle_momentum=False, div_factor=ONECYCLE_DIV, final_div_factor=ONECYCLE_FINAL_DIV,
                )  # fmt: skip
            else:
                end = 1 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
                self.per_step = LinearLR(self.optimizer, start_factor=1.0, end_factor=end, total_iters=total - 1)
            return
        start = START if self.warmup_steps else 1.0
        self.per_step = LinearLR(self.optimizer, start_factor=start, total_iters=max(self.warmup_steps, 1))
        self.per_step_until = self.warmup_steps
        if self.kind == "plateau":  # eps 0: every reduction is made, however small the rate (the state counts them)
            self.per_epoch = ReduceLROnPlateau(self.optimizer, "max", factor=0.1, patience=self.patience, eps=0.0)
        else:
            self.per_epoch = StepLR(self.optimizer, step_size=self.lr_step, gamma=self.lr_gamma)

    def lr(self) -> float:
        """The learning rate of the next optimiser step."""
        return self.optimizer.param_groups[0]["lr"]

    def after_step(self) -> None:
        """Count an optimiser step, and set the rate of the next one."""
        self.step += 1
        if self.step <= self.per_step_until:
            quiet_step(self.per_step, self.optimizer)

    def end_epoch(self, val_top1: float) -> None:
        """Count a finished epoch: the step decay, or the plateau rule on its validation top-1."""
        self.epoch += 1
        if isinstance(self.per_epoch, ReduceLROnPlateau):
            before = self.lr()
            self.per_epoch.step(val_top1)
            if self.lr() < before:
                self.reduced_after.append(self.epoch)
        elif self.per_epoch is not None:
            quiet_step(self.per_epoch, self.optimizer)

    def state_dict(self) -> dict:
        """The counts that set the schedule up again: plain numbers and lists (checkpoints are read with
        weights_only=True). "reductions" as well, for the versions that only counted them."""
        plateau = self.per_epoch if isinstance(self.per_epoch, ReduceLROnPlateau) else None
        return {
            "step": self.step,
            "epoch": self.epoch,
            "reduced_after": list(self.reduced_after),
            "unplaced": self.unplaced,
            "reductions": len(self.reduced_after) + self.unplaced,
            "best": plateau.best if plateau else -math.inf,
            "bad_epochs": plateau.num_bad_epochs if plateau else 0,
        }

    def load_state_dict(self, state: dict) -> None:
        """Go on from `state` (state_dict's; or, from the versions before the schedulers, the same without
        "reduced_after" and "unplaced"): the schedulers built for this run's settings and stepped again to where it
        stopped. CheckpointError (its message without the path) for a state this run cannot go on from."""
        self.check_state(state)
        self.step, self.epoch = state["step"], state["epoch"]
        counted = "reduced_after" not in state  # those versions counted the reductions, not when they came
        self.reduced_after = [] if counted else list(state["reduced_after"])
        self.unplaced = state.get("reductions", 0) if counted else state.get("unplaced", 0)
        self.build()
        with library_warnings_off(STEP_ORDER_WARNING):  # (the optimiser has not stepped in this process)
            self.replay()
        if isinstance(self.per_epoch, ReduceLROnPlateau):
            counts = {"best": state["best"], "num_bad_epochs": state["bad_epochs"], "last_epoch": self.epoch}
            self.per_epoch.load_state_dict(counts)  # (it updates the scheduler's attributes with these)

    def check_state(self, state: object) -> None:
        """CheckpointError unless `state` holds counts that this run can go on from: nothing a checkpoint holds is
        trusted (and an epoch past this run's would make the replay long)."""
        if not isinstance(state, dict) or not all(key in state for key in STATE_KEYS):
            raise CheckpointError(f"its schedule state is not a table of {', '.join(STATE_KEYS)}")
        reduced, best, epoch = state.get("reduced_after", []), state["best"], state["epoch"]
        done = epoch if is_count(epoch, self.epochs) else 0  # at most one plateau reduction an epoch
        wrong = {
            "step": not is_count(state["step"], MOST_STEPS),
            "epoch": not is_count(epoch, self.epochs),
            "bad_epochs": not is_count(state["bad_epochs"], self.epochs),
            "reductions": not is_count(state.get("reductions", 0), self.epochs),
            "unplaced": not is_count(state.get("unplaced", 0), done),
            "reduced_after": not isinstance(reduced, list)
            or not all(is_count(after, done) and after > 0 for after in reduced)
            or reduced != sorted(set(reduced)),  # (in the order the run came to them, each once)
            "best": not isinstance(best, (int, float)) or isinstance(best, bool) or math.isnan(best),
        }
        key = next((key for key, bad in wrong.items() if bad), None)
        if key is not None:
            value = printable(shown(state.get(key)))
            value = value if len(value) <= 40 else value[:37] + "..."
            raise CheckpointError(
                f"its schedule state's {key} = {value} is not one a run of {self.epochs} epoch(s) can go on from"
            )

    def replay(self) -> None:
        """Step the fresh schedulers as the run did up to self.step and self.epoch (then divide the rate by 10
        for each reduction of an older state that did not say when: the factors commute)."""
        if isinstance(self.per_step, OneCycleLR):  # its rate is a function of the step: step to it at once
            position = min(self.step, self.per_step_until)
            if position:
                self.per_step.load_state_dict({"last_epoch": position - 1})
                self.per_step.step()
            return
        stepped = 0
        for epoch in range(1, self.epoch + 1):
            stepped = self.step_to(min(epoch * self.steps_per_epoch, self.step), stepped)
            if isinstance(self.per_epoch, StepLR):
                self.per_epoch.step()
            elif epoch in self.reduced_after:
                self.divide_by_10()
        self.step_to(self.step, stepped)
        for _ in range(self.unplaced if isinstance(self.per_epoch, ReduceLROnPlateau) else 0):
            self.divide_by_10()

    def step_to(self, step: int, stepped: int) -> int:
        """Step the per-step scheduler, which has been stepped `stepped` times, as the run did up to `step`."""
        until = min(step, self.per_step_until)
        for _ in range(stepped, until):
            self.per_step.step()
        return max(stepped, until)

    def divide_by_10(self) -> None:
        """What ReduceLROnPlateau does when its rule fires (factor 0.1, no floor)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * 0.1


def quiet_step(scheduler: LRScheduler, optimizer: torch.optim.Optimizer) -> None:
    """scheduler.step(), keeping PyTorch's note on the order of steps off the terminal only where it can come (its
    first step after being built, before the optimiser stepped): catch_warnings resets Python's record of the warnings
    shown, so any warning of the training loop would show again each step. (An attribute gone in another PyTorch
    version reads as "it can come".)"""
    if getattr(scheduler, "_step_count", 1) == 1 and not getattr(optimizer, "_opt_called", False):
        with library_warnings_off(STEP_ORDER_WARNING):
            scheduler.step()
    else:
        scheduler.step()


def is_count(value: object, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most


def state_from_old_checkpoint(checkpoint: dict, lr: float, warmup_steps: int) -> dict:
    """The schedule state of a checkpoint written before the Schedule object existed, from the state dicts
    of the PyTorch schedulers it held (LinearLR or OneCycleLR per step; StepLR or ReduceLROnPlateau per
    epoch): the counts of Schedule.state_dict, without when the plateau rule fired. CheckpointError (its message
    without the path) where they cannot be read."""
    try:
        return counts_of_old_schedulers(checkpoint, lr, warmup_steps)
    except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError) as error:
        why = printable(f"{type(error).__name__}: {error}")[:80]
        raise CheckpointError(
            f"its schedule (PyTorch's schedulers' state, step_schedule) cannot be read ({why})"
        ) from None


def counts_of_old_schedulers(checkpoint: dict, lr: float, warmup_steps: int) -> dict:
    step_state, epoch_state = checkpoint["step_schedule"], checkpoint.get("epoch_schedule") or {}
    state = {
        "step": step_state["last_epoch"],
        "epoch": checkpoint["epoch"],
        "reductions": 0,
        "best": epoch_state.get("best", -math.inf),
        "bad_epochs": epoch_state.get("num_bad_epochs", 0),
    }
    if "best" in epoch_state:  # ReduceLROnPlateau: how many times it divided the rate, from the rate now
        warmup = START + (1 - START) * min(state["step"], warmup_steps) / warmup_steps if warmup_steps else 1.0
        group = checkpoint["optimizer"]["param_groups"][0]  # its "initial_lr": that run's --lr
        state["reductions"] = max(0, round(math.log10(group.get("initial_lr", lr) * warmup / group["lr"])))
    return state
