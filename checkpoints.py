"""Checkpoints: written atomically, read safely, checked before use, and the RNG states they carry.

A checkpoint is a plain dict of tensors and Python data (see train.py's `checkpoint_state`), read
with `torch.load(weights_only=True)`: a file that would run code when unpickled is refused
unread. Every way a file can be unusable is one CheckpointError with a one-line message naming
the file; train.py (--resume, --evaluate) and inference.py read checkpoints through
`read_checked_checkpoint`.

`save_checkpoint` stores a CRC-32 of every tensor's bytes beside them ("checksum"), and reading
checks it: torch.load does not check the data it reads, so bytes flipped on a disk or in a copy
would otherwise load as weights and give confident nonsense. Files without one (written before)
are read unchecked.
"""

import pickle
import random
import stat
import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from alexnet import AlexNet
from atomic_files import save_atomically
from display_text import shown
from errors import CheckpointError, first_sentence
from presets import EvalPreset, preset_problem

CHECKPOINT_KEYS = ("model", "model_config", "classes", "preprocess")
PREPROCESS_KEYS = tuple(field.name for field in fields(EvalPreset))
# What best.pt keeps of a checkpoint (last.pt has everything, for --resume).
INFERENCE_KEYS = (
    "model", "model_config", "classes", "class_names", "preprocess", "epoch", "best_top1", "world_size", "args"
)  # fmt: skip


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[AlexNet, dict]:
    """Rebuild the model of a train.py checkpoint, in eval mode on `device`.

    Returns (model, meta) where meta holds "classes" (what predict names classes by: the names
    people read), "preprocess" (an EvalPreset) and, where the class ids are not those names (e.g.
    ImageNet's WordNet ids), "ids".
    Checkpoints are loaded with weights_only=True: they hold tensors and plain Python data only;
    anything else is refused unread, since unpickling it could run arbitrary code.
    Raises CheckpointError, with a one-line message naming the path, for a file that is missing,
    not a checkpoint, truncated, refused as unsafe, missing keys, or whose weights do not fit its
    model_config.
    """
    checkpoint = read_checked_checkpoint(Path(path))
    model = model_from_checkpoint(checkpoint).to(device).eval()
    return model, {**class_meta(checkpoint), "preprocess": eval_preset(checkpoint)}


def model_from_checkpoint(checkpoint: dict) -> AlexNet:
    """The AlexNet of a checked checkpoint (read_checked_checkpoint), holding the checkpoint's weights, on the CPU.

    Built on the meta device and handed the checkpoint's tensors (assign=True) rather than built and then
    overwritten: the init that the weights replace would cost half a second of a CPU core (58 M random numbers).
    """
    with torch.device("meta"):
        model = AlexNet(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"], assign=True)  # cannot fail after the checks
    return model


def class_meta(checkpoint: dict) -> dict:
    """{"classes": the names to print, "ids": the ids behind them (only where they differ)}. A
    checkpoint keeps the class ids (folder names, e.g. "n02111889") as "classes", which data is
    checked against, and, since ImageNet-style ids say little to people, their readable names as
    "class_names" (None, or absent in checkpoints written before it existed, when the ids are the names)."""
    names = checkpoint.get("class_names")
    if names is None:
        return {"classes": list(checkpoint["classes"])}
    return {"classes": list(names), "ids": list(checkpoint["classes"])}


def eval_preset(checkpoint: dict) -> EvalPreset:
    """The evaluation preprocessing a checkpoint stores (as a dict), as an EvalPreset."""
    return EvalPreset(**{key: checkpoint["preprocess"][key] for key in PREPROCESS_KEYS})


def read_checked_checkpoint(path: Path) -> dict:
    """A train.py checkpoint as a dict, checked so that AlexNet(**checkpoint["model_config"]) builds
    and loads checkpoint["model"]; CheckpointError (one line) otherwise."""
    checkpoint = read_checkpoint(path)
    check_checkpoint_contents(checkpoint, path)
    verify_checksum(checkpoint, path)
    with torch.device("meta"):  # shapes only: no time or memory spent on 58 M real parameters
        model = build_model(checkpoint["model_config"], path)
    check_classes_and_preprocess(checkpoint, model, path)
    check_weights(model, checkpoint["model"], path)
    return checkpoint


def read_checkpoint(path: Path) -> object:
    """torch.load(path, weights_only=True), with every failure turned into one CheckpointError."""
    try:
        info = path.stat()
    except OSError as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else f"cannot read it ({error.strerror})"
        raise CheckpointError(f"{path}: {reason}") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if info.st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; was it written or copied completely?")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # e.g. torch's pickle-protocol warning on foreign files: the error says it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises UnpicklingError, RuntimeError, EOFError, KeyError, ... on bad files
        raise CheckpointError(f"{path}: {checkpoint_error_reason(path, error)}") from None


def tensors_of(value: object, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a checkpoint's nested dicts, lists and tuples, with its place ("model.fc6.weight"), in order."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "checksum":
                yield from tensors_of(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from tensors_of(item, f"{name}.{index}")


def checksum(checkpoint: dict) -> str:
    """CRC-32 of every tensor of `checkpoint`: its place, shape, dtype and bytes (83 ms for best.pt's 233 MB on one
    core: docs/troubleshooting.md)."""
    crc = 0
    for name, tensor in tensors_of(checkpoint):
        crc = zlib.crc32(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode(), crc)
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # the bytes of any dtype
        crc = zlib.crc32(data.numpy(), crc)
    return f"{crc:08x}"


def without_tensors(value: object) -> object:
    """A checkpoint's nested dicts, lists and tuples with every tensor as None and the checksum left out: what it
    holds besides its tensors (classes, preprocessing, settings, counters)."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, dict):
        return {key: without_tensors(item) for key, item in value.items() if key != "checksum"}
    if isinstance(value, (list, tuple)):
        return [without_tensors(item) for item in value]
    return value


CONTENTS_CHECKSUM = "v2:"  # the prefix of a checksum over everything; before it (8 hex digits alone): the tensors


def contents_checksum(checkpoint: dict) -> str:
    """checksum(checkpoint), continued over the repr of everything else it holds (see without_tensors)."""
    crc = zlib.crc32(repr(without_tensors(checkpoint)).encode(), int(checksum(checkpoint), 16))
    return f"{CONTENTS_CHECKSUM}{crc:08x}"


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write a checkpoint atomically, with the checksum that reading it verifies."""
    save_atomically({**checkpoint, "checksum": contents_checksum(checkpoint)}, path)


def verify_checksum(checkpoint: dict, path: Path) -> None:
    """CheckpointError when what was read is not what was written: every tensor and every other value, or the
    tensors alone in checkpoints written before CONTENTS_CHECKSUM (a file without a checksum passes)."""
    stored = checkpoint.get("checksum")
    if stored is None:
        return
    computed = contents_checksum(checkpoint) if str(stored).startswith(CONTENTS_CHECKSUM) else checksum(checkpoint)
    if computed != stored:
        raise CheckpointError(
            f"{path}: damaged: its contents are not the ones written (their checksum differs: bytes changed on the "
            "disk or in a copy); restore it from a copy or train again (last.pt and best.pt are separate files: "
            "--evaluate and inference.py read either)"
        )


def checkpoint_error_reason(path: Path, error: Exception) -> str:
    """Why torch.load failed, judged from the error and the file's first bytes (which say its format)."""
    with open(path, "rb") as file:
        header = file.read(4)
    is_zip = header == b"PK\x03\x04"  # torch.save's format: a zip archive holding data.pkl and the tensors
    is_pickle = header[:1] == b"\x80" and header[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # a protocol 2-5 pickle
    reason = first_sentence(str(error).split("WeightsUnpickler error:")[-1]) or type(error).__name__
    if isinstance(error, pickle.UnpicklingError) and (is_zip or is_pickle):
        # The weights-only unpickler stops at the first thing that is not a tensor or plain data
        # (a class to import, a function to call, an opcode it does not know): a full unpickle
        # would have run it.
        return (
            f"refused as unsafe and not loaded: PyTorch's weights-only loader, which reads only tensors and "
            f"plain data, rejected it ({reason}), and a full unpickle could run arbitrary code; "
            "load only checkpoints written by train.py"
        )
    if is_zip and not zipfile.is_zipfile(path):
        return "truncated or corrupt checkpoint (its zip archive is incomplete); was it written or copied completely?"
    if is_zip:
        return "a zip archive, but not one torch.save wrote (or a damaged one)"
    if is_pickle:
        return f"truncated or corrupt checkpoint ({type(error).__name__}: {reason})"
    return "not a PyTorch checkpoint: neither a zip archive (torch.save's format) nor a pickle"


def check_checkpoint_contents(checkpoint: object, path: Path) -> None:
    """Raise CheckpointError unless `checkpoint` is a dict with the keys train.py writes."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: not a train.py checkpoint: it holds a {type(checkpoint).__name__}, "
            f"not a dict with {', '.join(CHECKPOINT_KEYS)}"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        bare = checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values())
        hint = (
            " (it looks like a bare model.state_dict(); inference needs the checkpoint train.py writes)" if bare else ""
        )
        raise CheckpointError(f"{path}: not a train.py checkpoint: no {', '.join(missing)}{hint}")
    preprocess = checkpoint["preprocess"]
    missing = [key for key in PREPROCESS_KEYS if not isinstance(preprocess, dict) or key not in preprocess]
    if missing:
        raise CheckpointError(f"{path}: its preprocess lacks {', '.join(missing)}")
    if not isinstance(checkpoint["model_config"], dict) or not isinstance(checkpoint["model"], dict):
        raise CheckpointError(f"{path}: its model_config and model must be dicts (a config and a state_dict)")


def build_model(config: dict, path: Path) -> AlexNet:
    """AlexNet(**config), or CheckpointError if the stored config does not describe one."""
    try:
        return AlexNet(**config)
    except Exception as error:  # unknown keyword (TypeError), impossible sizes (RuntimeError, ValueError)
        raise CheckpointError(
            f"{path}: its model_config {config} does not describe an AlexNet "
            f"({type(error).__name__}: {first_sentence(str(error))})"
        ) from None


def check_classes_and_preprocess(checkpoint: dict, model: AlexNet, path: Path) -> None:
    """Raise CheckpointError if the classes or the preprocessing make no sense, or disagree with the model."""
    classes, num_classes = checkpoint["classes"], model.config["num_classes"]
    if not isinstance(classes, (list, tuple)) or len(classes) != num_classes:
        count = len(classes) if isinstance(classes, (list, tuple)) else type(classes).__name__
        raise CheckpointError(f"{path}: has {count} class names but its model has {num_classes} outputs")
    problem = classes_problem(classes, num_classes, unique=True)  # the ids: folder names, which data is matched to
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    if num_classes < 2:  # trained on one class folder (refused since): it would name that class for any image
        raise CheckpointError(f"{path}: has one class ({classes[0]}), so it names it for any image; train it on two "
                              "or more classes")  # fmt: skip
    names = checkpoint.get("class_names")
    if names is not None and (
        not isinstance(names, (list, tuple)) or len(names) != len(classes) or not all(isinstance(n, str) for n in names)
    ):
        raise CheckpointError(f"{path}: its class_names are not {len(classes)} strings, one per class")
    problem = preset_problem(checkpoint["preprocess"], model.min_input_size)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    if checkpoint["preprocess"]["in_channels"] != model.config["in_channels"]:
        raise CheckpointError(
            f"{path}: preprocess.in_channels is {checkpoint['preprocess']['in_channels']} "
            f"but the model takes {model.config['in_channels']} channels"
        )


def classes_problem(classes: object, count: int, unique: bool) -> str | None:
    """What makes no sense in a list of class names read from a file, as one line "classes = VALUE: what is wrong";
    None for `count` strings (and no two the same, if `unique`: ids are; readable names need not be, ImageNet has
    two "crane"s). For checkpoints and exports alike."""
    if not isinstance(classes, (list, tuple)) or not all(isinstance(name, str) for name in classes):
        return f"classes = {shown(classes)}: not a list of {count} names (text)"
    if len(classes) != count:
        return f"classes = {shown(classes)}: {len(classes)} names for {count} outputs"
    seen = set()
    for name in classes if unique else ():
        if name in seen:
            return f"classes = {shown(classes)}: {shown(name)} is there twice"
        seen.add(name)
    return None


def check_weights(model: AlexNet, weights: dict, path: Path) -> None:
    """Raise CheckpointError, naming the first difference, unless `weights` fit `model` exactly and are finite.

    load_state_dict would say the same in a multi-line dump of every difference; one line is enough
    to see what went wrong (usually a model_config that is not the one the weights were trained with).
    """
    expected = model.state_dict()
    differences = []
    for key, tensor in expected.items():
        if key not in weights:
            differences.append(f"{key} is missing")
        elif not isinstance(weights[key], torch.Tensor):
            differences.append(f"{key} is a {type(weights[key]).__name__}, not a tensor")
        elif not weights[key].is_floating_point():
            differences.append(f"{key} has dtype {weights[key].dtype}, not a floating-point type")
        elif weights[key].shape != tensor.shape:
            differences.append(
                f"{key} has shape {tuple(weights[key].shape)} in the file "
                f"but {tuple(tensor.shape)} in the model its model_config describes"
            )
    differences += [f"{key} is not a weight of this model" for key in weights if key not in expected]
    if differences:
        others = len(differences) - 1
        more = f" (and {others} more difference{'s' * (others > 1)})" if others else ""
        raise CheckpointError(f"{path}: weights do not match its model_config {model.config}: {differences[0]}{more}")
    for key in expected:
        if not torch.isfinite(weights[key]).all():
            raise CheckpointError(f"{path}: weight {key} holds NaN or infinite values (saved from a diverged run?)")


def check_same_model(checkpoint: dict, config: dict, path: Path) -> None:
    """CheckpointError saying what differs when a checkpoint's model is not the one `config` describes."""
    saved = checkpoint["model_config"]
    differences = [
        f"{key} {saved.get(key)} there, {config.get(key)} here"
        for key in sorted(config)
        if saved.get(key) != config.get(key)
    ]
    if differences:
        raise CheckpointError(
            f"{path}: the checkpoint's model differs from the requested one ({'; '.join(differences)})"
        )


def check_same_classes(checkpoint: dict, classes: list[str], path: Path) -> None:
    """CheckpointError naming the first classes that differ when a checkpoint was trained on other
    classes than `classes` (the data's, in label order): the same count is not enough. Names are compared in
    Unicode's composed form (NFC), as folders.py compares train/ with val/."""
    saved = checkpoint["classes"]
    composed, composed_here = ([unicodedata.normalize("NFC", name) for name in names] for names in (saved, classes))
    if composed == composed_here:
        return  # the same names, perhaps in another Unicode form (macOS writes NFD, Linux mostly NFC)
    if len(saved) != len(classes):
        raise CheckpointError(f"{path}: the checkpoint has {len(saved)} classes and this data {len(classes)}")
    if sorted(composed) == sorted(composed_here):
        raise CheckpointError(
            f"{path}: the checkpoint's classes are this data's written in another Unicode form (NFC or NFD), which "
            f"sorts them in another order, so the labels would not match; rename this data's class folders as the "
            f"checkpoint writes them"
        )
    differing = [(there, here) for there, here in zip(saved, classes) if there != here]
    shown = "; ".join(f"{there!r} there, {here!r} here" for there, here in differing[:3])
    more = f"; and {len(differing) - 3} more" if len(differing) > 3 else ""
    raise CheckpointError(f"{path}: the checkpoint's classes are not this data's ({shown}{more})")


def latest_checkpoint(runs_dir: Path) -> Path | None:
    """best.pt of the most recently modified run directory, if any."""
    candidates = sorted(runs_dir.glob("*/best.pt"), key=lambda path: path.stat().st_mtime)
    return candidates[-1] if candidates else None


# Random number generators: their states travel in checkpoints for exact resumption.


def rng_states(device: torch.device) -> dict:
    """Every random number generator's state (NumPy's key array as a tensor, for weights_only loading)."""
    kind, keys, *rest = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), *rest)
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(states["python"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
