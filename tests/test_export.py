"""inference.py --export (ONNX and torch.export's .pt2), classifying with the exported files, and
--output (CSV, JSON Lines): the same answers as the checkpoint, and one line for each bad input.

CPU only and offline: one 3-class AlexNet checkpoint at 67 px, exported once per format for the
module (an export and its parity check take a few seconds on one core).
"""

import contextlib
import csv
import functools
import io
import json
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import onnx
import pytest
import torch
from helpers import CHECKPOINT_CLASSES, CHECKPOINT_PRESET, needs_pt2_archive, run, run_cli, shared_folder
from onnx import TensorProto, helper
from PIL import Image

import export
import inference
from alexnet import AlexNet
from engine import predict
from errors import ExportError
from export import export_model, load_exported
from presets import eval_transform
from shapes import make_shapes

CLASSES, PREPROCESS = CHECKPOINT_CLASSES, CHECKPOINT_PRESET
FORMATS = [".onnx", ".pt2"]
SUCCESS = re.compile(r"^wrote (\S+) \(([\d.]+) MB\): its logits are within ([\d.e+-]+) of the checkpoint's")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three rendered shapes as PNG and JPEG files of different sizes (not squares), and one file that is no image."""
    folder = tmp_path_factory.mktemp("images")
    images, _ = make_shapes(3, image_size=96, seed=1)
    for i, (image, size) in enumerate(zip(images, [(96, 80), (70, 90), (96, 96)])):
        picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size)
        picture.save(folder / f"{i}.{'jpg' if i == 1 else 'png'}")
    (folder / "3-bad.png").write_text("not an image")
    return folder


Exported = Callable[[str], tuple[Path, str]]  # a format's suffix -> (the file, what the export printed)


@pytest.fixture(scope="module")
def exported(checkpoint_file: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """exported(".onnx") -> (file, stdout): the file written by `inference.py --export` with an image for its check,
    once for the session and format (the checkpoint's weights are seeded: the same in every pytest-xdist worker),
    when a test first asks for it: one worker can export ONNX while the other exports .pt2. Read only."""

    def export_to(suffix: str, folder: Path) -> None:
        path = folder / f"shapes{suffix}"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            inference.main(["--export", str(path), "--checkpoint", str(checkpoint_file), str(image_folder / "0.png")])
        path.with_name(path.name + ".stdout").write_text(out.getvalue())

    def get(suffix: str) -> tuple[Path, str]:
        folder = shared_folder(tmp_path_factory, f"exported{suffix}", functools.partial(export_to, suffix))
        return folder / f"shapes{suffix}", (folder / f"shapes{suffix}.stdout").read_text()

    return get


def logits(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return network(batch).float()


# Exporting -----------------------------------------------------------------------------------


@needs_pt2_archive
@pytest.mark.parametrize("suffix", FORMATS)
def test_export_reports_the_measured_difference_and_leaves_one_file(exported: Exported, suffix: str) -> None:
    path, out = exported(suffix)
    match = SUCCESS.match(out)
    assert match and len(out.splitlines()) == 1, out
    assert match.group(1) == str(path) and 0 <= float(match.group(3)) <= 1e-4
    assert abs(float(match.group(2)) - path.stat().st_size / 1e6) < 0.1
    assert "11 inputs" in out  # 4 random, then 4 rendered + the image given: each set whole, and its first alone
    assert [p.name for p in path.parent.iterdir() if p.suffix == suffix] == [path.name]  # no partial file left


@needs_pt2_archive
def test_pt2_file_has_a_dynamic_batch_and_the_metadata(exported: Exported) -> None:
    extra = {"alexnet.json": ""}
    program = torch.export.load(exported(".pt2")[0], extra_files=extra)
    metadata = json.loads(extra["alexnet.json"])
    assert metadata["classes"] == CLASSES and metadata["preprocess"] == asdict(PREPROCESS)
    module = program.module()
    for batch in (1, 3, 11):
        assert module(torch.randn(batch, 3, 67, 67)).shape == (batch, 3)


@needs_pt2_archive
@pytest.mark.parametrize("suffix", FORMATS)
def test_reading_an_export_prints_no_library_warning(exported: Exported, suffix: str) -> None:
    """torch 2.11's .pt2 reader warns about its own read-only buffers: nothing a user can act on, so
    load_exported keeps it (and any warning LIBRARY_WARNINGS lists) off the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_exported(exported(suffix)[0])


@needs_pt2_archive
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_failed_parity_check_says_by_how_much_and_leaves_nothing(
    tmp_path: Path, loaded: tuple[AlexNet, dict], monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    model, meta = loaded
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"the previous export")  # a failed export must not replace it either
    monkeypatch.setattr(export, "reference_logits", lambda model, inputs: model(inputs).float() + 1e-3)
    with pytest.raises(ExportError) as caught:
        export_model(model, meta, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: the exported network differs from the checkpoint by up to 0.001")
    assert "nothing written" in message and "\n" not in message
    assert sorted(tmp_path.iterdir()) == [path] and path.read_bytes() == b"the previous export"


@needs_pt2_archive
def test_the_parity_check_compares_larger_batches_too(
    tmp_path: Path, loaded: tuple[AlexNet, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A difference only in batches of more than one (AlexNet's folded path) fails the export."""
    model, meta = loaded
    monkeypatch.setattr(export, "reference_logits", lambda model, x: model(x).float() + (len(x) > 1) * 5e-4)
    with pytest.raises(ExportError, match="by up to 0.0005"):
        export_model(model, meta, tmp_path / "m.pt2")
    assert list(tmp_path.iterdir()) == []


@needs_pt2_archive
def test_nan_logits_fail_the_check_and_the_model_is_left_as_it_was(
    tmp_path: Path, loaded: tuple[AlexNet, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, meta = loaded
    monkeypatch.setattr(export, "reference_logits", lambda model, x: model(x).float() * float("nan"))
    model.train()
    try:
        with pytest.raises(ExportError, match="by up to nan in a logit"):
            export_model(model, meta, tmp_path / "m.pt2")
        assert model.training  # export_model evaluates in eval mode, then puts the model back as it found it
    finally:
        model.eval()
    assert list(tmp_path.iterdir()) == []


def test_onnx_file_has_a_dynamic_batch_and_the_metadata(exported: Exported) -> None:
    model = onnx.load(str(exported(".onnx")[0]))
    (images,) = model.graph.input
    batch, *dims = images.type.tensor_type.shape.dim
    assert images.name == "images" and batch.dim_param and [d.dim_value for d in dims] == [3, 67, 67]
    assert [output.name for output in model.graph.output] == ["logits"]
    metadata = json.loads({p.key: p.value for p in model.metadata_props}["alexnet"])
    assert metadata["classes"] == CLASSES and metadata["preprocess"] == asdict(PREPROCESS)
    assert metadata["model_config"]["num_classes"] == 3


@needs_pt2_archive
@pytest.mark.parametrize("suffix", FORMATS)
def test_exported_files_give_the_checkpoints_logits_at_every_batch_size(
    exported: Exported, loaded: tuple[AlexNet, dict], suffix: str
) -> None:
    """Batch 1 takes AlexNet's pooling path, larger batches its folded fc6: the file must match both."""
    model, meta = loaded
    network, exported_meta = load_exported(exported(suffix)[0])
    assert exported_meta == meta
    rendered, _ = make_shapes(6, image_size=80, seed=3)
    inputs = torch.cat([torch.randn(6, 3, 67, 67), eval_transform(rendered, PREPROCESS)])
    for batch in (inputs[:1], inputs[6:7], inputs):
        difference = (logits(network, batch) - logits(model, batch)).abs().max().item()
        assert difference <= 1e-4


def test_unknown_extension_is_one_error(
    tmp_path: Path, loaded: tuple[AlexNet, dict], checkpoint_file: Path, capsys: pytest.CaptureFixture
) -> None:
    model, meta = loaded
    for name in ("m.tflite", "m"):
        with pytest.raises(ExportError, match=r"unknown export format .*; name the file \.onnx \(ONNX\) or \.pt2"):
            export_model(model, meta, tmp_path / name)
        with pytest.raises(ExportError, match="unknown export format"):
            load_exported(tmp_path / name)
    status, out, err = run_cli(capsys, "--export", str(tmp_path / "m.tflite"), "--checkpoint", str(checkpoint_file))
    assert status == 2 and out == "" and f"--export {tmp_path / 'm.tflite'}: unknown export format .tflite" in err
    status, _, err = run_cli(capsys, "x.png", "--checkpoint", str(checkpoint_file), "--output", str(tmp_path / "r.txt"))
    assert status == 2 and f"--output {tmp_path / 'r.txt'}: unknown results format .txt" in err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_export_path_is_one_error(
    tmp_path: Path, loaded: tuple[AlexNet, dict], checkpoint_file: Path, capsys: pytest.CaptureFixture
) -> None:
    model, meta = loaded
    (tmp_path / "a-file").write_text("")
    (tmp_path / "folder.onnx").mkdir()
    cases = {
        tmp_path / "missing" / "m.onnx": "no such directory",
        tmp_path / "a-file" / "m.pt2": "is a file, not a directory",
        tmp_path / "folder.onnx": "is a directory",
    }
    for path, reason in cases.items():
        with pytest.raises(ExportError, match=reason) as caught:
            export_model(model, meta, path)
        assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
    path = tmp_path / "missing" / "m.onnx"
    status, out, err = run_cli(capsys, "--export", str(path), "--checkpoint", str(checkpoint_file))
    assert status == 2 and out == "" and f"--export {path}: cannot write there: " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "folder.onnx"]


def test_export_of_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "best.pt"
    junk.write_text("not a checkpoint")
    status, out, err = run_cli(capsys, "--export", str(tmp_path / "m.onnx"), "--checkpoint", str(junk))
    assert status == 1 and out == ""
    assert err.startswith(f"error: {junk}: not a PyTorch checkpoint") and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


@needs_pt2_archive
def test_export_refuses_flags_it_would_ignore(
    tmp_path: Path, checkpoint_file: Path, exported: Exported, capsys: pytest.CaptureFixture
) -> None:
    target = str(tmp_path / "m.onnx")
    status, _, err = run_cli(capsys, "--export", target, "--checkpoint", str(checkpoint_file), "--output", "r.csv")
    assert status == 2 and "--export writes the network and classifies nothing" in err
    status, _, err = run_cli(capsys, "--export", target, "--checkpoint", str(exported(".pt2")[0]))
    assert status == 2 and "--export: give a checkpoint (.pt) or --weights imagenet" in err
    status, _, err = run_cli(capsys, "--checkpoint", str(checkpoint_file))
    assert status == 2 and "give image files or directories to classify (or --export FILE" in err


# Missing optional packages ---------------------------------------------------------------------


@needs_pt2_archive
def test_a_missing_onnx_package_is_one_line_saying_what_to_install(
    tmp_path: Path,
    loaded: tuple[AlexNet, dict],
    exported: Exported,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    model, meta = loaded
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    with pytest.raises(ExportError, match="needs the onnxscript package, which is not installed: pip install onnx "):
        export_model(model, meta, tmp_path / "m.onnx")
    assert export_model(model, meta, tmp_path / "m.pt2").max_difference <= 1e-4  # .pt2 needs none of them
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match="running ONNX files needs the onnxruntime package"):
        load_exported(exported(".onnx")[0])
    status, out, err = run_cli(capsys, "x.png", "--checkpoint", str(exported(".onnx")[0]))
    assert status == 1 and out == "" and len(err.splitlines()) == 1 and "pip install onnxruntime" in err


# Reading exported files ------------------------------------------------------------------------


def tiny_onnx_without_metadata(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    # An IR version and opset every supported ONNX Runtime reads (onnx's defaults may be newer than the runtime's).
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


@needs_pt2_archive
def test_files_that_are_not_exports_are_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny_onnx_without_metadata(tmp_path / "other.onnx")
    program = torch.export.export(Double(), (torch.randn(2),))
    torch.export.save(program, tmp_path / "other.pt2")
    torch.export.save(program, tmp_path / "badjson.pt2", extra_files={"alexnet.json": '{"classes": ["a"]}'})
    (tmp_path / "text.onnx").write_text("not a model")
    (tmp_path / "text.pt2").write_text("not a model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    torch.save({"model": {}}, tmp_path / "checkpoint.pt2")
    cases = {
        "other.onnx": "has no 'alexnet' metadata (the class names and preprocessing): not a file written by",
        "other.pt2": "has no 'alexnet' metadata",
        "badjson.pt2": "its 'alexnet' metadata is not what this exporter writes (KeyError",
        "text.onnx": "not an ONNX model that ONNX Runtime can load",
        "text.pt2": "not a .pt2 file that torch.export.load can read",
        "empty.onnx": "empty file (0 bytes)",
        "checkpoint.pt2": "not a .pt2 file that torch.export.load can read",
        "missing.pt2": "no such file",
    }
    for name, reason in cases.items():
        with pytest.raises(ExportError) as caught:
            load_exported(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / name}: ") and reason in message and "\n" not in message, message
    Image.new("RGB", (80, 80)).save(tmp_path / "x.png")
    for name in ("other.onnx", "text.pt2"):
        status, out, err = run_cli(capsys, str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / name))
        assert (
            status == 1 and out == "" and err.startswith(f"error: {tmp_path / name}: ") and len(err.splitlines()) == 1
        )


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"classes": ["a", "b", "c", "d"]}, "classes = ['a', 'b', 'c', 'd']: 4 names for 3 outputs"),
        ({"preprocess": {**asdict(PREPROCESS), "image_size": 70}}, "preprocess.image_size = 70: the network takes 67"),
        ({"preprocess": {**asdict(PREPROCESS), "std": [0.2, 0.0, 0.2]}}, "preprocess.std = [0.2, 0.0, 0.2]: 0.0 is"),
    ],
    ids=["classes", "image-size", "std"],
)
def test_onnx_metadata_that_makes_no_sense_is_one_line(
    exported: Exported, tmp_path: Path, change: dict, expected: str
) -> None:
    """The metadata beside the network must describe it: the ONNX side (the .pt2 side: test_untrusted_files.py)."""
    model = onnx.load(str(exported(".onnx")[0]))
    (prop,) = [p for p in model.metadata_props if p.key == "alexnet"]
    prop.value = json.dumps({**json.loads(prop.value), **change})
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExportError) as caught:
        load_exported(path)
    assert str(caught.value).startswith(f"{path}: {expected}") and "\n" not in str(caught.value), str(caught.value)


# Classifying with exported files ---------------------------------------------------------------


@needs_pt2_archive
@pytest.mark.parametrize("suffix", FORMATS)
def test_cli_classifies_with_exported_files_as_with_the_checkpoint(
    exported: Exported,
    checkpoint_file: Path,
    image_folder: Path,
    capsys: pytest.CaptureFixture,
    suffix: str,
) -> None:
    good = [str(image_folder / name) for name in ("0.png", "1.jpg", "2.png")]
    for extra in ([], ["--tta", "10crop", "--topk", "2"]):  # 10crop: batches of 30 crops
        expected = run_cli(capsys, *good, "--checkpoint", str(checkpoint_file), *extra)
        answer = run_cli(capsys, *good, "--checkpoint", str(exported(suffix)[0]), *extra)
        assert expected[0] == 0 and answer == expected  # the same classes and percentages, as printed
    assert len(expected[1].splitlines()) == 3 * 3
    # --json prints the probabilities in full: equal to rounding.
    expected, answer = [
        run_cli(capsys, *good, "--checkpoint", str(f), "--json")[1] for f in (checkpoint_file, exported(suffix)[0])
    ]
    for line, expected_line in zip(answer.splitlines(), expected.splitlines(), strict=True):
        top, expected_top = json.loads(line)["predictions"], json.loads(expected_line)["predictions"]
        assert [p["class"] for p in top] == [p["class"] for p in expected_top]
        assert [p["probability"] for p in top] == pytest.approx([p["probability"] for p in expected_top], abs=1e-6)


# --output --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_output_writes_one_row_per_image_and_leaves_the_terminal_as_it_was(
    tmp_path: Path,
    checkpoint_file: Path,
    loaded: tuple[AlexNet, dict],
    image_folder: Path,
    capsys: pytest.CaptureFixture,
    suffix: str,
) -> None:
    missing = tmp_path / "gone.png"
    inputs = [str(image_folder), str(missing)]  # 0.png, 1.jpg, 2.png, 3-bad.png, gone.png
    plain = run_cli(capsys, *inputs, "--checkpoint", str(checkpoint_file), "--topk", "2")
    out_file = tmp_path / f"results{suffix}"
    written = run_cli(capsys, *inputs, "--checkpoint", str(checkpoint_file), "--topk", "2", "--output", str(out_file))
    assert written == plain and plain[0] == 1  # the same stdout, stderr and status (two unreadable inputs)
    names = [image_folder / "0.png", image_folder / "1.jpg", image_folder / "2.png"]
    expected = predict(*loaded, names, topk=2)
    if suffix == ".csv":
        with open(out_file, newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
        assert rows[0] == ["image", "error", "class_1", "confidence_1", "class_2", "confidence_2"]
        images = [row[0] for row in rows[1:]]
        errors = [row[1] for row in rows[1:]]
        predictions = [[(row[2], float(row[3])), (row[4], float(row[5]))] for row in rows[1:4]]
        assert all(len(row) == 6 for row in rows) and rows[4][2:] == ["", "", "", ""]
    else:
        rows = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
        images = [row["image"] for row in rows]
        errors = [row.get("error", "") for row in rows]
        predictions = [[(p["class"], p["probability"]) for p in row["predictions"]] for row in rows[:3]]
    assert images == [*map(str, names), str(image_folder / "3-bad.png"), str(missing)]
    assert errors[:3] == ["", "", ""] and errors[3].startswith("not an image") and errors[4] == "no such file"
    assert predictions == expected  # confidences in full, not as printed
    assert sorted(p.name for p in tmp_path.iterdir()) == [out_file.name]  # no partial file left


def test_output_that_cannot_be_written_is_one_line(
    tmp_path: Path, checkpoint_file: Path, image_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    image = str(image_folder / "0.png")
    target = tmp_path / "missing" / "r.csv"
    status, out, err = run_cli(capsys, image, "--checkpoint", str(checkpoint_file), "--output", str(target))
    assert status == 2 and out == "" and f"--output {target}: no such directory" in err
    (tmp_path / "taken.csv").mkdir()
    status, out, err = run_cli(
        capsys, image, "--checkpoint", str(checkpoint_file), "--output", str(tmp_path / "taken.csv")
    )
    assert status == 1 and out.startswith(f"{image}:")  # classified and printed; only the file failed
    assert err.startswith(f"error: --output {tmp_path / 'taken.csv'}: cannot write it") and len(err.splitlines()) == 1


# File names --------------------------------------------------------------------------------------


@needs_pt2_archive
def test_an_export_to_the_longest_file_name_is_written(
    tmp_path: Path, checkpoint_file: Path, capsys: pytest.CaptureFixture
) -> None:
    """A 250-character name (file systems take 255 bytes) leaves no room for a temporary name built on it: the
    temporary name's stem is cut short (whole characters), the file written under the name asked for."""
    path = tmp_path / ("n" * 246 + ".pt2")
    status, out, err = run_cli(capsys, "--export", str(path), "--checkpoint", str(checkpoint_file))
    assert status == 0 and err == "" and SUCCESS.match(out), err
    assert sorted(tmp_path.iterdir()) == [path]
    too_long = tmp_path / ("n" * 252 + ".pt2")  # 256 bytes: refused at once, not after the export
    status, out, err = run_cli(capsys, "--export", str(too_long), "--checkpoint", str(checkpoint_file))
    assert status == 2 and out == "" and f"--export {too_long}: cannot write there: its name is 256 bytes" in err
    names = ("n" * 246 + ".pt2", "\u00e9" * 125 + ".onnx", "\U0001f600" * 62 + ".pt2")  # 1, 2, 4 bytes a character
    for partial in (export.partial_path(tmp_path / name) for name in names):
        assert len(partial.name.encode()) <= 255 and partial.name.startswith(".") and partial.suffix in FORMATS


@needs_pt2_archive
def test_an_export_that_cannot_be_put_in_place_is_one_line(
    tmp_path: Path, loaded: tuple[AlexNet, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target becomes a directory while the export runs (another program made it): the rename fails, and that
    is one line saying what to do, with no temporary file left behind."""
    model, meta = loaded
    path = tmp_path / "m.pt2"
    parity = export.parity

    def parity_then_a_directory_appears(*args: object) -> tuple[float, float, int]:
        result = parity(*args)
        path.mkdir()
        (path / "file").write_text("")
        return result

    monkeypatch.setattr(export, "parity", parity_then_a_directory_appears)
    with pytest.raises(ExportError) as caught:
        export_model(model, meta, path)
    assert str(caught.value) == f"{path}: cannot write it (Is a directory); choose another path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


# End to end ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_and_classify_in_subprocesses(tmp_path: Path, checkpoint_file: Path, image_folder: Path) -> None:
    """As a user runs it: export to ONNX, then classify a folder with the file into a CSV."""
    result = run("inference.py", "--export", "m.onnx", "--checkpoint", str(checkpoint_file), cwd=tmp_path)
    assert SUCCESS.match(result.stdout) and result.stderr == ""
    images = [str(image_folder / "0.png"), str(image_folder / "2.png")]
    with_checkpoint = run("inference.py", *images, "--checkpoint", str(checkpoint_file), cwd=tmp_path)
    with_onnx = run("inference.py", *images, "--checkpoint", "m.onnx", "--output", "r.csv", cwd=tmp_path)
    assert with_onnx.stdout == with_checkpoint.stdout and with_onnx.stderr == ""
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("suffix", FORMATS)
def test_an_export_onto_a_full_disk_is_one_line(tmp_path: Path, suffix: str) -> None:
    """The exporter writes into /dev/full (through a link, so that deleting the temporary file deletes the link):
    every write fails with ENOSPC, as on a full disk, and each exporter raises what it raises then."""
    if suffix == ".onnx":
        pytest.importorskip("onnx")
    tmp, path = tmp_path / f".a.partial{suffix}", tmp_path / f"a{suffix}"
    tmp.symlink_to("/dev/full")
    network = torch.nn.Linear(3, 2).eval()
    with pytest.raises(ExportError) as caught:
        export.write_exported(network, torch.randn(2, 3), "{}", tmp, path)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: no space left on the disk \(0\.0 MB written when it ran out, [\d,.]+ [MG]B free "
        rf"in {re.escape(str(tmp_path))}, about 0\.0 MB needed\); free some space or write elsewhere",
        str(caught.value),
    )
    assert not tmp.exists() and not path.exists() and Path("/dev/full").exists()


@needs_pt2_archive
@pytest.mark.parametrize("suffix", FORMATS)
def test_an_exported_file_with_flipped_bytes_is_refused_as_damaged(
    exported: Exported, suffix: str, tmp_path: Path
) -> None:
    data = bytearray(exported(suffix)[0].read_bytes())
    middle = len(data) // 2  # inside fc6's weight, the bulk of the file
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    damaged = tmp_path / f"damaged{suffix}"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"damaged: its weights are not the ones written \(their checksum differs"):
        load_exported(damaged)
    load_exported(exported(suffix)[0])  # the intact file reads


def test_a_torch_without_the_pt2_archive_refuses_pt2_in_one_line(tmp_path: Path, monkeypatch) -> None:
    """torch 2.5 pickles a .pt2's weights, which pt2_files.py cannot check: exporting to or reading a .pt2 is one
    line there (the floor lane runs this on such a torch; here it is made to look like one), and nothing is left."""
    import export

    monkeypatch.setattr(export, "pt2_archive_supported", lambda: False)
    model = AlexNet(num_classes=3, in_channels=3)
    meta = {"classes": CHECKPOINT_CLASSES, "preprocess": CHECKPOINT_PRESET}
    with pytest.raises(ExportError, match=r"m\.pt2: torch .* older layout, whose weights are unpickled") as error:
        export.export_model(model, meta, tmp_path / "m.pt2")
    assert "\n" not in str(error.value) and list(tmp_path.iterdir()) == []
    (tmp_path / "x.pt2").write_bytes(b"PK not read")
    with pytest.raises(ExportError, match=r"x\.pt2: torch .* use \.onnx, or a newer torch"):
        export.load_exported(tmp_path / "x.pt2")
