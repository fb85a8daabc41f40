"""The learning-rate schedule: one object gives the rate for every step, and is saved as one dict.

    >>> schedule = Schedule("step", peak_lr=0.01, total_steps=800, warmup_steps=200, lr_step=6)
    >>> schedule.lr()          # the rate for the next step: lr / 100 at step 0, rising to lr at 200
    >>> schedule.step += 1     # after each optimiser step (train.py's train_one_epoch)
    >>> schedule.end_epoch(val_top1)   # after each epoch: the step decay, or the plateau rule

Kinds:
- "step": linear warm-up over `warmup_steps` from lr/100, then lr x lr_gamma every `lr_step`
  epochs (StepLR);
- "plateau": the same warm-up, then lr / 10 whenever validation top-1 has not improved for more
  than `patience` epochs (the paper's rule; PyTorch's ReduceLROnPlateau in "max" mode);
- "onecycle": linear warm-up from lr/25 to lr over `warmup_steps` (at most half the run), then
  linear decay to lr/25e4 at the last step (PyTorch's OneCycleLR, linear, no momentum cycling).
"""

import math
from dataclasses import asdict, dataclass

SCHEDULES = ("step", "onecycle", "plateau")


@dataclass
class Schedule:
    kind: str  # one of SCHEDULES
    peak_lr: float  # --lr
    total_steps: int  # optimiser steps in the whole run (onecycle)
    warmup_steps: int
    lr_step: int = 6  # step: epochs between decays
    lr_gamma: float = 0.1  # step: the decay factor
    patience: int = 4  # plateau: epochs without improvement tolerated
    # The state, saved in checkpoints:
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # epochs completed
    reductions: int = 0  # plateau: times the rate was divided by 10
    best: float = -math.inf  # plateau: the best validation top-1 so far
    bad_epochs: int = 0  # plateau: epochs since it last improved

    def lr(self) -> float:
        """The learning rate for the next optimiser step."""
        if self.kind == "onecycle":
            return self.onecycle_lr()
        warmup = 1.0
        if self.warmup_steps and self.step < self.warmup_steps:
            warmup = 0.01 + 0.99 * self.step / self.warmup_steps
        if self.kind == "plateau":
            return self.peak_lr * warmup * 0.1**self.reductions
        return self.peak_lr * warmup * self.lr_gamma ** (self.epoch // self.lr_step)

    def onecycle_lr(self) -> float:
        start, end = self.peak_lr / 25, self.peak_lr / 25 / 1e4
        peak_step = min(0.5, max(self.warmup_steps, 1) / self.total_steps) * self.total_steps - 1
        step = min(self.step, self.total_steps - 1)
        if step <= peak_step:
            return start + (self.peak_lr - start) * step / peak_step if peak_step > 0 else self.peak_lr
        return self.peak_lr + (end - self.peak_lr) * (step - peak_step) / (self.total_steps - 1 - peak_step)

    def end_epoch(self, val_top1: float) -> None:
        """Count a finished epoch; on a plateau, divide the rate by 10 after `patience` epochs without
        a relative improvement of 1e-4 (ReduceLROnPlateau's default threshold)."""
        self.epoch += 1
        if self.kind != "plateau":
            return
        if val_top1 > self.best * (1 + 1e-4):  # -inf at first: any value improves on it
            self.best, self.bad_epochs = val_top1, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.reductions, self.bad_epochs = self.reductions + 1, 0

    def state_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key in STATE_KEYS}

    def load_state_dict(self, state: dict) -> None:
        for key in STATE_KEYS:
            setattr(self, key, state[key])


STATE_KEYS = ("step", "epoch", "reductions", "best", "bad_epochs")


def state_from_old_checkpoint(checkpoint: dict, lr: float, warmup_steps: int) -> dict:
    """The schedule state of a checkpoint written before Schedule existed, from the state dicts of
    the PyTorch schedulers it held (LinearLR or OneCycleLR per step; StepLR or
    ReduceLROnPlateau per epoch)."""
    step_state, epoch_state = checkpoint["step_schedule"], checkpoint.get("epoch_schedule") or {}
    state = {
        "step": step_state["last_epoch"],
        "epoch": checkpoint["epoch"],
        "reductions": 0,
        "best": epoch_state.get("best", -math.inf),
        "bad_epochs": epoch_state.get("num_bad_epochs", 0),
    }
    if "best" in epoch_state:  # ReduceLROnPlateau: how many times it divided the rate, from the rate now
        warmup = 0.01 + 0.99 * min(state["step"], warmup_steps) / warmup_steps if warmup_steps else 1.0
        now = checkpoint["optimizer"]["param_groups"][0]["lr"]
        state["reductions"] = round(math.log10(lr * warmup / now))
    return state
