"""Checkpoints and exported files we did not write: nothing in them runs, nothing in them blows up, and every
setting they carry is checked for sense, not only for integrity.

A .pt2 file is a zip archive that torch.export.load reads by unpickling (weights marked use_pickle, legacy
weight files, pickled constants and objects, sample inputs it retries with a full unpickler), by evaluating
(sympy parses the graph's symbolic sizes with eval) and by importing (pytree specs name modules). The files
here are crafted from a genuine export, each with one payload that writes a marker file: plain
torch.export.load writes it (the slow test proves each payload real), load_exported refuses the file unread.
"""

import copy
import io
import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers import CHECKPOINT_CLASSES, CHECKPOINT_PRESET, SCRIPT_ENV, needs_pt2_archive, run
from PIL import Image

from alexnet import AlexNet
from checkpoints import load_checkpoint
from errors import CheckpointError, ExportError
from export import export_model, load_exported
from presets import preset_problem

Members = dict[str, bytes]  # a zip archive's members, by name relative to its root folder, in order


class RunsCode:
    """Unpickled, it runs `code`: what a hostile file would hide where a loader unpickles."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple:
        return exec, (self.code,)


def writes(marker: Path) -> str:
    """Python that writes `marker`: the payload's visible effect."""
    return f"open({str(marker)!r}, 'w').write('ran')"


def payload(marker: Path) -> bytes:
    return pickle.dumps(RunsCode(writes(marker)), protocol=2)


def read_members(path: Path) -> tuple[str, Members]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root = names[0].split("/")[0]
        return root, {name[len(root) + 1 :]: archive.read(name) for name in names}


def write_members(path: Path, root: str, members: Members) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(f"{root}/{name}" if root else name, data)


def edit_json(members: Members, name: str, edit: Callable[[dict], object]) -> None:
    data = json.loads(members[name])
    edit(data)
    members[name] = json.dumps(data).encode()


WEIGHTS, CONSTANTS, MODEL = (
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
    "models/model.json",
)


def pickled_weight(members: Members, marker: Path) -> None:
    """The issue's file: a weight marked use_pickle, its bytes a pickle (torch.load(weights_only=False))."""

    def edit(config: dict) -> None:
        entry = config["config"]["classifier.6.bias"]
        entry["use_pickle"] = True
        members[f"data/weights/{entry['path_name']}"] = payload(marker)

    edit_json(members, WEIGHTS, edit)


def legacy_weights(members: Members, marker: Path) -> None:
    """The legacy layout: data/weights/model.pt, unpickled whole (weights-only first, then in full)."""
    for name in [name for name in members if name.startswith("data/weights/")]:
        del members[name]
    members["data/weights/model.pt"] = payload(marker)


def legacy_constants(members: Members, marker: Path) -> None:
    del members[CONSTANTS]
    members["data/constants/model.pt"] = payload(marker)


def constant(kind: str) -> Callable[[Members, Path], None]:
    """A constant of the given file kind: a pickled tensor (tensor_), a pickled object (opaque_obj_) or a
    TorchScript object (custom_obj_)."""

    def craft(members: Members, marker: Path) -> None:
        entry = {"path_name": f"{kind}0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        members[CONSTANTS] = json.dumps({"config": {"c": entry}}).encode()
        members[f"data/constants/{kind}0"] = payload(marker)

    return craft


def sample_inputs(members: Members, marker: Path) -> None:
    """torch.export.load retries sample inputs that the weights-only loader refuses with a full unpickle."""
    members["data/sample_inputs/model.pt"] = payload(marker)


def sympy_expression(members: Members, marker: Path) -> None:
    """A symbolic size is parsed by sympy.sympify, which evaluates it as Python."""
    text = members[MODEL].decode()
    symbol = "Symbol('s77', positive=True, integer=True)"
    assert symbol in text  # the genuine file's batch size
    expression = f"__import__('builtins').exec({writes(marker)!r}) or {symbol}"
    members[MODEL] = text.replace(symbol, json.dumps(expression)[1:-1]).encode()  # as a JSON string holds it


def imported_module(members: Members, marker: Path) -> None:
    """A pytree spec's enum context names a module that torch imports: here one beside the file (cwd)."""
    (marker.parent / "pt2_marker_module.py").write_text(writes(marker) + "\n")
    enum = json.dumps({"__enum__": True, "fqn": "pt2_marker_module:E", "name": "A"})

    def edit(model: dict) -> None:
        signature = model["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(signature["in_spec"])
        spec[1]["context"] = enum
        signature["in_spec"] = json.dumps(spec)

    edit_json(members, MODEL, edit)


# variant -> (how the file is crafted, what the refusal names)
UNSAFE = {
    "pickled-weight": (pickled_weight, "weight classifier.6.bias is pickled"),
    "legacy-weights": (legacy_weights, "data/weights/model.pt"),
    "legacy-constants": (legacy_constants, "data/constants/model.pt"),
    "pickled-constant": (constant("tensor_"), "data/constants/tensor_0"),
    "opaque-object": (constant("opaque_obj_"), "data/constants/opaque_obj_0"),
    "custom-object": (constant("custom_obj_"), "data/constants/custom_obj_0"),
    "sample-inputs": (sample_inputs, "data/sample_inputs/model.pt"),
    "sympy-expression": (sympy_expression, "models/model.json"),
    "imported-module": (imported_module, "models/model.json"),
}
# custom_obj_ is read by TorchScript's unpickler, which runs no Python: refused all the same, not run below.
RUNS_CODE_IN_TORCH = [name for name in UNSAFE if name != "custom-object"]


@pytest.fixture(scope="module")
def genuine(loaded: tuple[AlexNet, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .pt2 file written by export_model from a model in channels_last, as train.py trains them (read only);
    beside it, "warnings.txt": the warnings the export gave, one a line."""
    model, meta = loaded
    path = tmp_path_factory.mktemp("genuine") / "genuine.pt2"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_model(copy.deepcopy(model).to(memory_format=torch.channels_last), meta, path)
    path.with_name("warnings.txt").write_text("".join(f"{warning.message}\n" for warning in caught))
    return path


def crafted(genuine: Path, folder: Path, name: str, craft: Callable[[Members, Path], None]) -> tuple[Path, Path]:
    """(the file, its marker): `genuine` with `craft` applied to its members."""
    root, members = read_members(genuine)
    marker = folder / f"{name}.marker"
    craft(members, marker)
    path = folder / f"{name}.pt2"
    write_members(path, root, members)
    return path, marker


def refusal(path: Path) -> str:
    with pytest.raises(ExportError) as caught:
        load_exported(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


@needs_pt2_archive
@pytest.mark.parametrize("variant", list(UNSAFE))
def test_a_pt2_that_would_run_code_is_refused_unread(genuine: Path, tmp_path: Path, variant: str) -> None:
    craft, named = UNSAFE[variant]
    path, marker = crafted(genuine, tmp_path, variant, craft)
    message = refusal(path)
    assert "refused" in message and named in message and "inference.py --export" in message, message
    assert not marker.exists()


@needs_pt2_archive
def test_the_genuine_file_still_loads(genuine: Path, tmp_path: Path) -> None:
    """A trained model's export (channels_last weights) is written without a word from torch and read back; and,
    rewritten member by member as the crafted files are (another zip writer), it still reads: what is refused
    above is the payload, not the rewriting."""
    assert genuine.with_name("warnings.txt").read_text() == ""
    path, _ = crafted(genuine, tmp_path, "rewritten", lambda members, marker: None)
    for file in (genuine, path):
        network, meta = load_exported(file)
        assert meta["classes"] == CHECKPOINT_CLASSES and network(torch.zeros(2, 3, 67, 67)).shape == (2, 3)


def compiled_code(members: Members) -> None:
    members["data/aotinductor/model/model.so"] = b"\x7fELF"  # torch.export.load would load it as a library


def traversal(members: Members) -> None:
    members["../../outside.json"] = b"{}"


def pickle_member(members: Members) -> None:
    members["data/extra.pkl"] = pickle.dumps([1])


def unknown_extra(members: Members) -> None:
    members["extra/other.json"] = b"{}"


def graph_target(members: Members) -> None:
    text = members[MODEL].decode()
    members[MODEL] = text.replace("torch.ops.aten.relu_.default", "torch.os.system", 1).encode()


def weight_size(members: Members) -> None:
    """A weight's config says 10^12 values, its record holds none: torch would allocate torch.zeros of that size."""

    def edit(config: dict) -> None:
        entry = config["config"]["classifier.6.bias"]
        entry["tensor_meta"]["sizes"] = [{"as_int": 10**12}]
        members[f"data/weights/{entry['path_name']}"] = b""

    edit_json(members, WEIGHTS, edit)


UNEXPECTED = {
    "compiled-code": (compiled_code, "data/aotinductor/model/model.so"),
    "traversal": (traversal, "../../outside.json"),
    "pickle-member": (pickle_member, "data/extra.pkl"),
    "unknown-extra": (unknown_extra, "extra/other.json"),
    "graph-target": (graph_target, "torch.os.system"),
    "weight-size": (weight_size, "classifier.6.bias"),
}


@needs_pt2_archive
@pytest.mark.parametrize("variant", list(UNEXPECTED))
def test_a_pt2_holding_what_no_export_holds_is_refused(genuine: Path, tmp_path: Path, variant: str) -> None:
    craft, named = UNEXPECTED[variant]
    path, _ = crafted(genuine, tmp_path, variant, lambda members, marker: craft(members))
    message = refusal(path)
    assert "refused" in message and named in message, message


@needs_pt2_archive
def test_a_pt2_zip_bomb_and_duplicate_members_are_refused_unread(genuine: Path, tmp_path: Path) -> None:
    """A member deflated from 1 GB to a few kB (torch's reader would inflate it whole), and two members of one
    name (zip readers disagree on which one counts): refused before anything is inflated or read."""
    root, members = read_members(genuine)
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            if name != "extra/alexnet.checksum":
                archive.writestr(f"{root}/{name}", data)
        archive.writestr(f"{root}/extra/alexnet.checksum", b"0" * 2**30, compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < genuine.stat().st_size + 2**22
    message = refusal(bomb)
    assert "refused" in message and "extra/alexnet.checksum is compressed" in message, message
    twice = tmp_path / "twice.pt2"
    with zipfile.ZipFile(twice, "w", zipfile.ZIP_STORED) as archive, pytest.warns(UserWarning, match="Duplicate"):
        for name, data in members.items():
            archive.writestr(f"{root}/{name}", data)
        archive.writestr(f"{root}/{CONSTANTS}", json.dumps({"config": {}}).encode())
    message = refusal(twice)
    assert "refused" in message and f"{CONSTANTS} twice" in message, message


PROOF = """
import sys, torch
for path in sys.argv[1:]:
    try:
        torch.export.load(path).module()(torch.zeros(2, 3, 67, 67))
    except Exception:
        pass
"""


@pytest.mark.slow
def test_plain_torch_export_load_runs_each_payload(genuine: Path, tmp_path: Path) -> None:
    """The payloads are real: torch.export.load itself (in a process of its own) writes every marker. Should a
    torch release stop one, this fails: the refusal test above then proves less, and its payload needs a
    new look."""
    files = [crafted(genuine, tmp_path, name, UNSAFE[name][0]) for name in RUNS_CODE_IN_TORCH]
    command = [sys.executable, "-c", PROOF, *(str(path) for path, _ in files)]
    subprocess.run(command, cwd=tmp_path, env=SCRIPT_ENV, capture_output=True, timeout=600, check=True)
    assert [name for name, (_, marker) in zip(RUNS_CODE_IN_TORCH, files) if not marker.exists()] == []


@pytest.mark.slow
def test_inference_refuses_a_pt2_that_would_run_code_in_one_line(genuine: Path, tmp_path: Path) -> None:
    Image.new("RGB", (80, 80), "red").save(tmp_path / "x.png")
    for variant in ("pickled-weight", "legacy-weights", "custom-object"):
        path, marker = crafted(genuine, tmp_path, variant, UNSAFE[variant][0])
        result = run("inference.py", "x.png", "--checkpoint", path.name, cwd=tmp_path, check=False)
        assert result.returncode == 1 and result.stdout == "", result
        assert result.stderr.startswith(f"error: {path.name}: refused") and len(result.stderr.splitlines()) == 1
        assert not marker.exists()


# Settings checked for sense ------------------------------------------------------------------------------

GOOD = asdict(CHECKPOINT_PRESET)
NAN = float("nan")
# A preset change -> what the one-line problem says.
BAD_PRESETS = {
    "resize_size 60000": ({"resize_size": 60000}, "preprocess.resize_size = 60000: more than 4096"),
    "image_size 0": ({"image_size": 0}, "preprocess.image_size = 0: less than 67"),
    "image_size -5": ({"image_size": -5}, "preprocess.image_size = -5: less than 67"),
    "image_size 66": ({"image_size": 66}, "preprocess.image_size = 66: less than 67"),
    "crop above resize": ({"image_size": 80}, "preprocess.resize_size = 77: less than preprocess.image_size (80)"),
    "image_size text": ({"image_size": "67"}, "preprocess.image_size = '67': not a whole number"),
    "image_size float": ({"image_size": 67.5}, "preprocess.image_size = 67.5: not a whole number"),
    "image_size bool": ({"image_size": True}, "preprocess.image_size = True: not a whole number"),
    "two means": ({"mean": [0.5, 0.4]}, "preprocess.mean = [0.5, 0.4]: 2 values for 3 channels"),
    "mean text": ({"mean": "0.5"}, "preprocess.mean = '0.5': not a list of 3 numbers"),
    "mean nan": ({"mean": [0.5, NAN, 0.3]}, "preprocess.mean = [0.5, nan, 0.3]: nan is not within [0, 1]"),
    "mean 255": ({"mean": [125, 0.4, 0.3]}, "preprocess.mean = [125, 0.4, 0.3]: 125 is not within [0, 1]"),
    "std 0": ({"std": [0.25, 0, 0.3]}, "preprocess.std = [0.25, 0, 0.3]: 0 is not within [0.0039, 1]"),
    "std negative": ({"std": [-0.25, 0.2, 0.3]}, "preprocess.std = [-0.25, 0.2, 0.3]: -0.25 is not within"),
    "std nan": ({"std": [NAN] * 3}, "preprocess.std = [nan, nan, nan]: nan is not within"),
    "std text": ({"std": ["a", 0.2, 0.3]}, "preprocess.std = ['a', 0.2, 0.3]: 'a' is not a number"),
    "in_channels 2": ({"in_channels": 2}, "preprocess.in_channels = 2: neither 1 (grayscale) nor 3 (RGB)"),
    "in_channels text": ({"in_channels": "3"}, "preprocess.in_channels = '3': neither 1 (grayscale) nor 3 (RGB)"),
    "missing": ({"std": None}, "preprocess.std = None: not a list of 3 numbers"),
}


@pytest.mark.parametrize("case", list(BAD_PRESETS))
def test_a_preset_that_makes_no_sense_is_one_line_naming_the_field(case: str) -> None:
    change, expected = BAD_PRESETS[case]
    problem = preset_problem({**GOOD, **change}, min_image_size=67)
    assert problem is not None and problem.startswith(expected) and "\n" not in problem, problem


def test_sane_presets_pass() -> None:
    assert preset_problem(GOOD, min_image_size=67) is None
    grey = {**GOOD, "in_channels": 1, "mean": [0.5], "std": [1 / 255], "image_size": 4096, "resize_size": 4096}
    assert preset_problem(grey, min_image_size=67) is None
    assert preset_problem({**GOOD, "mean": (0,), "std": (1,), "in_channels": 1}, min_image_size=67) is None


def test_a_huge_value_is_shown_short() -> None:
    problem = preset_problem({**GOOD, "mean": list(range(100000))}, min_image_size=67)
    assert problem is not None and len(problem) < 300


@pytest.fixture(scope="module")
def weights(checkpoint_file: Path) -> dict:
    return torch.load(checkpoint_file, weights_only=True)


# A checkpoint change -> what its one-line refusal says after "PATH: ".
BAD_CHECKPOINTS = {
    "resize 60000": ({"preprocess": {**GOOD, "resize_size": 60000}}, "preprocess.resize_size = 60000: more than"),
    "two means": ({"preprocess": {**GOOD, "mean": [0.5, 0.5]}}, "preprocess.mean = [0.5, 0.5]: 2 values for 3"),
    "std 0": ({"preprocess": {**GOOD, "std": [0.0, 0.2, 0.3]}}, "preprocess.std = [0.0, 0.2, 0.3]: 0.0 is not"),
    "classes not text": ({"classes": [1, 2, 3]}, "classes = [1, 2, 3]: not a list of 3 names (text)"),
    "classes twice": ({"classes": ["a", "b", "a"]}, "classes = ['a', 'b', 'a']: 'a' is there twice"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_checkpoint_whose_settings_make_no_sense_is_refused_in_one_line(
    weights: dict, tmp_path: Path, case: str
) -> None:
    change, expected = BAD_CHECKPOINTS[case]
    path = tmp_path / "best.pt"
    torch.save({**weights, **change}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: {expected}"), str(caught.value)
    assert "\n" not in str(caught.value)


def metadata_edit(change: dict) -> Callable[[Members, Path], None]:
    def craft(members: Members, marker: Path) -> None:
        data = json.loads(members["extra/alexnet.json"])
        for key, value in change.items():
            if key in data["preprocess"]:
                data["preprocess"][key] = value
            else:
                data[key] = value
        members["extra/alexnet.json"] = json.dumps(data).encode()

    return craft


# An export metadata change -> what its one-line refusal says after "PATH: ".
BAD_METADATA = {
    "four classes": ({"classes": ["a", "b", "c", "d"]}, "classes = ['a', 'b', 'c', 'd']: 4 names for 3 outputs"),
    "classes not text": ({"classes": [1, 2, 3]}, "classes = [1, 2, 3]: not a list of 3 names (text)"),
    "image size": ({"image_size": 80, "resize_size": 90}, "preprocess.image_size = 80: the network takes 67"),
    "channels": ({"in_channels": 1, "mean": [0.5], "std": [0.5]}, "preprocess.in_channels = 1: the network takes 3"),
    "std 0": ({"std": [0, 0, 0]}, "preprocess.std = [0, 0, 0]: 0 is not within"),
    "resize 60000": ({"resize_size": 60000}, "preprocess.resize_size = 60000: more than 4096"),
    "model_config": ({"model_config": {"num_classes": 3, "layout": "other"}}, "model_config = "),
}


@needs_pt2_archive
@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_an_export_whose_metadata_makes_no_sense_is_refused_in_one_line(
    genuine: Path, tmp_path: Path, case: str
) -> None:
    change, expected = BAD_METADATA[case]
    path, _ = crafted(genuine, tmp_path, "bad", metadata_edit(change))
    assert refusal(path).startswith(f"{path}: {expected}"), refusal(path)


@needs_pt2_archive
def test_an_export_checks_its_archive_as_read_not_only_as_first_seen(
    genuine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch reads the very bytes that were checked: a file rewritten with a hostile one between the check of the
    file on the disk and its reading (here: as that check ends) is refused, and nothing runs."""
    import export

    path, _ = crafted(genuine, tmp_path, "rewritten", lambda members, marker: None)
    hostile, marker = crafted(genuine, tmp_path, "hostile", pickled_weight)
    inspect = export.inspect_pt2

    def rewritten_after_the_first_check(source: io.BufferedIOBase, *args: object) -> object:
        contents = inspect(source, *args)
        if not isinstance(source, io.BytesIO):  # the file on the disk, not the bytes read from it
            path.write_bytes(hostile.read_bytes())  # the same file (inode), which `source` reads on
        return contents

    monkeypatch.setattr(export, "inspect_pt2", rewritten_after_the_first_check)
    message = refusal(path)
    assert "refused" in message and "weight classifier.6.bias is pickled" in message, message
    assert not marker.exists()
