"""A .pt2 file read without running anything in it: what torch.export.load may be handed.

torch.export.load (torch 2.14) runs code from a .pt2 archive in several ways: it unpickles in full the weights
and constants marked use_pickle, the legacy weight and constant files (data/weights/model.pt,
data/constants/model.pt), pickled ("opaque") objects, and sample inputs that the weights-only loader refuses
(it retries them unrestricted); it hands custom objects to TorchScript's unpickler; it evaluates the graph's
symbolic sizes as Python (sympy.sympify); it imports any module that a pytree spec's enum names; it loads
AOTInductor's compiled libraries; and it inflates compressed members whole. So `inspect_pt2` reads the zip
archive itself, before torch does, and lets through only what export.export_model writes:

- the members torch.export.save writes for one program: models/model.json, its weights config and raw weights
  (data/weights/weight_N, none pickled), an empty constants config, the sample inputs (tensors that the
  weights-only loader reads), the archive's small version files, and the extra files asked for; nothing else
  (no .pt or .pkl, no constants, no compiled code, no name outside the archive's folder);
- every member stored as it is (not compressed: no zip bomb), within the file, each name once, and the same
  members at the same offsets for Python's zip reader and torch's: what is checked is what torch reads;
- in the graph, ATen operators only, symbolic sizes that are plain symbols, pytree specs of tuples, lists and
  dicts, no custom objects; each weight float32 and dense (in any order of its dimensions: trained weights are
  channels_last), its record exactly its size.

Anything else is one ExportError naming the file and what was found in it.
"""

import io
import json
import math
import re
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from display_text import printable, shown
from errors import ExportError, first_sentence

MODEL = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
CONFIGS = (MODEL, WEIGHTS_CONFIG, CONSTANTS_CONFIG)
# The small files of the archive's format, and what they must hold (None: anything short).
FORMAT_FILES = {"archive_format": b"pt2", "archive_version": b"0", "byteorder": None, ".data/version": None}
OPTIONAL_FILES = {".data/serialization_id"}
WEIGHT = re.compile(r"data/weights/weight_\d+")
# Where torch.export.load would unpickle (a legacy .pt, a constant, a weight not named weight_N) or load code.
PICKLED = re.compile(r".*\.(pt|pth|pkl|pickle)|data/constants/.*|data/weights/.*")
COMPILED = re.compile(r"data/aotinductor/.*|.*\.(so|dll|dylib|pyd)")

MAX_MEMBERS = 1000  # an AlexNet export holds 27
MAX_JSON_BYTES = 16 * 2**20  # models/model.json is 40 kB; the metadata 1 kB for 3 classes, ~30 kB for 1000
MAX_SMALL_BYTES = 64  # the format files and the checksum

# What an exported AlexNet's graph holds (models/model.json).
FLOAT32, STRIDED = 7, 7  # torch._export.serde.schema's ScalarType.FLOAT and Layout.Strided
TARGET = re.compile(r"torch\.ops\.aten\.\w+\.\w+")  # ATen operators, as torch.export writes their names
SYMBOL = re.compile(r"Symbol\('s\d+'(, \w+=(True|False))*\)|s\d+|\d+")  # the batch size: s77, as sympy writes it
SPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}  # pytree nodes that import nothing
NODE_METADATA = {"stack_trace", "nn_module_stack", "torch_fn", "source_fn_stack"}
NOT_IN_ALEXNET = ("as_custom_obj", "as_custom_objs", "as_graph", "as_operator", "custom_obj_values")


@dataclass(frozen=True)
class Pt2Contents:
    """What a checked .pt2 archive holds, as read without unpickling or evaluating anything."""

    extra: dict[str, str]  # the extra files asked for that it holds, as text
    weights: dict[str, tuple[int, ...]]  # each weight's name and shape (float32, dense)
    input_shape: tuple[int | None, ...]  # the graph's input; None for a dynamic size (the batch)
    output_shape: tuple[int | None, ...]


def inspect_pt2(source: BinaryIO, path: Path, extra_names: tuple[str, ...]) -> Pt2Contents:
    """Check the .pt2 archive `source` (a seekable binary file, read from its start) as the module docstring
    says, before torch reads it; ExportError (one line naming `path`) for anything else."""
    reader, sizes = read_directory(source, path)
    for name, expected in FORMAT_FILES.items():  # first: a torch.save file (a checkpoint) is no .pt2 at all
        if name not in sizes:
            raise unreadable(path, f"no {name} in its zip archive")
        value = reader.get_record(name) if sizes[name] <= MAX_SMALL_BYTES else b"..."
        if expected is not None and value != expected:
            raise unreadable(path, f"its {name} is {shown(value)}, not {expected.decode()}")
    check_names(sizes, extra_names, path)  # before the rest: a legacy weights file is refused as such
    missing = [name for name in (*CONFIGS, SAMPLE_INPUTS) if name not in sizes]
    if missing:
        raise unreadable(path, f"no {missing[0]} in its zip archive")
    weights = weight_shapes(json_member(reader, WEIGHTS_CONFIG, path), sizes, path)
    if json_member(reader, CONSTANTS_CONFIG, path) != {"config": {}}:
        raise refused(path, f"its {CONSTANTS_CONFIG} lists constants, which torch.export.load would unpickle")
    model = json_member(reader, MODEL, path)
    check_graph_values(model, path)
    input_shape, output_shape = graph_shapes(model, path)
    check_sample_inputs(reader.get_record(SAMPLE_INPUTS), path)
    extra = {name: text_member(reader, f"extra/{name}", path) for name in extra_names if f"extra/{name}" in sizes}
    return Pt2Contents(extra, weights, input_shape, output_shape)


def unreadable(path: Path, reason: str) -> ExportError:
    return ExportError(f"{path}: not a .pt2 file that torch.export.load can read ({reason})")


def refused(path: Path, what: str) -> ExportError:
    return ExportError(
        f"{path}: refused, not loaded: {what}; export it again from its checkpoint with inference.py --export"
    )


# ----------------------------------------------------------------------------------------------
# The zip archive: its directory, read by Python and by torch.


class ArchiveProblem(ValueError):
    """What makes a zip archive unsafe to hand to torch's reader (module-internal: raised as ExportError)."""


def read_directory(source: BinaryIO, path: Path) -> tuple[torch._C.PyTorchFileReader, dict[str, int]]:
    """torch's reader of the archive, and its members' sizes by name (relative to its root folder), once Python's
    zipfile and torch's reader agree on every member, and each is stored, within the file, and there once."""
    try:
        reader, sizes = agreed_directory(source)
    except ArchiveProblem as problem:
        raise refused(path, str(problem)) from None
    except Exception as error:  # what the zip readers raise on a file that is no zip archive (or a damaged one)
        raise unreadable(path, f"{type(error).__name__}: {printable(first_sentence(str(error)))}") from None
    return reader, sizes


def agreed_directory(source: BinaryIO) -> tuple[torch._C.PyTorchFileReader, dict[str, int]]:
    """(torch's reader, {name: size}) of a zip archive of stored members that Python and torch read alike;
    ArchiveProblem saying what is wrong, or the readers' own exceptions for a file that is not a zip archive."""
    end = source.seek(0, io.SEEK_END)
    source.seek(0)
    with zipfile.ZipFile(source) as archive:
        infos = archive.infolist()
    if not infos or len(infos) > MAX_MEMBERS:
        raise zipfile.BadZipFile(f"{len(infos)} members")
    root = infos[0].orig_filename.split("/")[0]
    for info in infos:
        name = printable(info.orig_filename)
        if info.flag_bits & 0x1:
            raise ArchiveProblem(f"its member {name} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ArchiveProblem(
                f"its member {name} is compressed ({info.compress_size:,} bytes that inflate to {info.file_size:,}), "
                "which torch.export.save never does, and torch would inflate it whole (a zip bomb?)"
            )
        if not info.orig_filename.startswith(f"{root}/"):  # torch's reader takes the first member's folder
            raise ArchiveProblem(f"its member {name} is not in its folder {printable(root)}/, as torch.export.save "
                                 "writes them (in torch's older .pt2 format, which it unpickles?)")  # fmt: skip
        if info.header_offset + info.file_size > end:
            raise ArchiveProblem(f"its member {name} ends beyond the end of the file")
    twice = [name for name, count in Counter(info.orig_filename for info in infos).items() if count > 1]
    if twice:
        raise ArchiveProblem(f"it holds {printable(twice[0])} twice (zip readers disagree on which one counts)")
    if sum(info.file_size for info in infos) > end:
        raise ArchiveProblem("its members add up to more than the file")
    source.seek(0)
    reader = torch._C.PyTorchFileReader(source)
    sizes = {info.orig_filename[len(root) + 1 :]: info.file_size for info in infos}
    offsets = {name: data_offset(source, info) for name, info in zip(sizes, infos)}
    if sorted(reader.get_all_records()) != sorted(sizes) or any(
        reader.get_record_size(name) != size or reader.get_record_offset(name) != offsets[name]
        for name, size in sizes.items()
    ):
        raise ArchiveProblem("Python's zip reader and torch's read different members in it")
    return reader, sizes


def data_offset(source: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start, from its local header (zipfile reads it there too)."""
    source.seek(info.header_offset)
    header = source.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise ArchiveProblem(f"its member {printable(info.orig_filename)} has no local header where its entry says")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def check_names(sizes: dict[str, int], extra_names: tuple[str, ...], path: Path) -> None:
    """ExportError for the first member that an export never holds: pickled data or compiled code are refused as
    such, anything else as unknown."""
    allowed = {*FORMAT_FILES, *OPTIONAL_FILES, *CONFIGS, SAMPLE_INPUTS}
    allowed |= {f"extra/{name}" for name in extra_names}
    for name in sizes:
        shown_name = printable(name)
        if name in allowed or WEIGHT.fullmatch(name):
            continue
        if COMPILED.fullmatch(name):
            raise refused(path, f"it holds {shown_name}, compiled code that torch.export.load would load and run")
        if PICKLED.fullmatch(name):
            raise refused(path, f"it holds {shown_name}, pickled data that would run code when loaded")
        raise refused(path, f"it holds {shown_name}, which inference.py --export never writes")
    for name, size in sizes.items():
        limit = MAX_JSON_BYTES if name.endswith(".json") else MAX_SMALL_BYTES
        if not (WEIGHT.fullmatch(name) or name == SAMPLE_INPUTS) and size > limit:
            raise refused(path, f"its {printable(name)} is {size:,} bytes, more than the {limit:,} allowed")


def text_member(reader: torch._C.PyTorchFileReader, name: str, path: Path) -> str:
    try:
        return reader.get_record(name).decode("utf-8")
    except UnicodeDecodeError:
        raise unreadable(path, f"its {name} is not UTF-8 text") from None


def json_member(reader: torch._C.PyTorchFileReader, name: str, path: Path) -> object:
    try:
        return json.loads(text_member(reader, name, path))
    except (ValueError, RecursionError) as error:
        raise unreadable(path, f"its {name} is not JSON ({type(error).__name__})") from None


# ----------------------------------------------------------------------------------------------
# What the archive's JSON says: the weights, the graph.


def weight_shapes(config: object, sizes: dict[str, int], path: Path) -> dict[str, tuple[int, ...]]:
    """{weight name: shape} of the weights config, once each weight is raw float32 in a record of its own and
    of exactly its size (torch allocates what the config says: a 0-byte record of 10^12 values would be 4 TB)."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise unreadable(path, f"its {WEIGHTS_CONFIG} lists no weights")
    shapes, records = {}, set()
    for weight, entry in entries.items():
        entry = entry if isinstance(entry, dict) else {}
        if entry.get("use_pickle") is not False:
            raise refused(
                path, f"its weight {printable(weight)} is pickled (use_pickle in {WEIGHTS_CONFIG}), which would run "
                "code when loaded"
            )  # fmt: skip
        record = f"data/weights/{entry.get('path_name')}"
        shape = tensor_shape(entry.get("tensor_meta"))
        if not WEIGHT.fullmatch(record) or record not in sizes or record in records:
            raise refused(path, f"its weight {printable(weight)} has no record of its own ({printable(record)})")
        if shape is None or 4 * math.prod(shape) != sizes[record]:
            raise refused(
                path, f"its weight {printable(weight)} is not the {sizes[record]:,} bytes of its record as float32 "
                f"values of the shape its config gives ({shown(entry.get('tensor_meta'))})"
            )  # fmt: skip
        shapes[weight] = shape
        records.add(record)
    unused = [name for name in sizes if WEIGHT.fullmatch(name) and name not in records]
    if unused:
        raise refused(path, f"it holds {unused[0]}, a weight record that no weight uses")
    return shapes


def tensor_shape(meta: object) -> tuple[int, ...] | None:
    """The shape of a float32 CPU tensor's serialized metadata whose values fill its record exactly, in any order
    of its dimensions (trained weights are channels_last); None for any other tensor."""
    if not isinstance(meta, dict) or meta.get("dtype") != FLOAT32 or meta.get("layout") != STRIDED:
        return None
    if meta.get("device") != {"type": "cpu", "index": None} or meta.get("storage_offset") != {"as_int": 0}:
        return None
    sizes, strides = whole_numbers(meta.get("sizes")), whole_numbers(meta.get("strides"))
    if sizes is None or strides is None or len(strides) != len(sizes):
        return None
    step = 1  # dense: each dimension, from the fastest-varying on, steps over all the faster ones together
    for stride, size in sorted(zip(strides, sizes)):
        if size != 1 and stride != step:
            return None
        step *= size
    return tuple(sizes)


def whole_numbers(values: object) -> list[int] | None:
    """[n, ...] of a serialized list of sizes [{"as_int": n}, ...], none negative; None for anything else."""
    if not isinstance(values, list):
        return None
    numbers = [value.get("as_int") if isinstance(value, dict) and len(value) == 1 else None for value in values]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    return numbers


def check_graph_values(model: object, path: Path) -> None:
    """ExportError for the first thing in the graph (models/model.json) that torch.export.load would evaluate,
    import or unpickle, or that an exported AlexNet does not hold."""
    stack = [model]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = graph_problem(key, item)
                if problem:
                    raise refused(path, f"its {MODEL} {problem}")
                stack.append(item)


def graph_problem(key: str, item: object) -> str | None:
    if key == "target" and not (isinstance(item, str) and TARGET.fullmatch(item)):
        return f"calls {shown(item)}, not an ATen operator as an exported AlexNet does"
    if key == "expr_str" and not (isinstance(item, str) and SYMBOL.fullmatch(item)):
        return f"holds the symbolic size {shown(item)}, which torch.export.load would evaluate as Python code"
    if key in ("in_spec", "out_spec") and not plain_spec(item):
        return f"holds the pytree spec {shown(item)}, which could make torch.export.load import modules"
    if key in NOT_IN_ALEXNET and item:
        return f"holds {key}, which torch would unpickle or resolve, and an exported AlexNet does not hold"
    if key == "metadata" and isinstance(item, dict) and set(item) - NODE_METADATA:
        return f"holds the node metadata {shown(sorted(set(item) - NODE_METADATA))}, which an exported AlexNet has not"
    return None


def plain_spec(text: object) -> bool:
    """Whether a serialized pytree spec is made of tuples, lists and dicts with string keys only: no type that
    torch would import to rebuild (an enum's module, a defaultdict's factory)."""
    try:
        spec = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        return False
    stack = [spec[1]] if isinstance(spec, list) and len(spec) == 2 else [None]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or node.get("type") not in SPEC_TYPES:
            return False
        context = node.get("context")
        try:
            keys = json.loads(context) if isinstance(context, str) else context
        except (ValueError, RecursionError):
            return False
        if keys is not None and not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
            return False
        children = node.get("children_spec")
        if not isinstance(children, list):
            return False
        stack.extend(children)
    return True


def graph_shapes(model: object, path: Path) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    """(the input's shape, the output's) of a graph of weights, one input tensor and one output tensor; None for a
    dynamic size (the batch)."""
    try:
        graph, signature = model["graph_module"]["graph"], model["graph_module"]["signature"]
        inputs = [kind(spec, {"parameter", "user_input"}) for spec in signature["input_specs"]]
        outputs = [kind(spec, {"user_output"}) for spec in signature["output_specs"]]
        (image,) = [spec["user_input"]["arg"]["as_tensor"]["name"] for spec in inputs if "user_input" in spec]
        (logits,) = [spec["user_output"]["arg"]["as_tensor"]["name"] for spec in outputs]
        return tuple(map(size_of, graph["tensor_values"][image]["sizes"])), tuple(
            map(size_of, graph["tensor_values"][logits]["sizes"])
        )
    except (KeyError, TypeError, ValueError) as error:  # ValueError: not one input or output
        raise refused(path, f"its {MODEL} is not the graph of an exported AlexNet ({type(error).__name__})") from None


def kind(spec: object, kinds: set[str]) -> dict:
    """An input or output spec of one of `kinds` (parameters, the image; the logits); ValueError for another."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in kinds:
        raise ValueError(spec)
    return spec


def size_of(size: object) -> int | None:
    return size["as_int"] if isinstance(size, dict) and isinstance(size.get("as_int"), int) else None


def check_sample_inputs(data: bytes, path: Path) -> None:
    """The sample inputs, the batch the network was exported with: torch.export.load unpickles them with
    PyTorch's weights-only loader and, where that refuses them, retries in full. Here they must be a torch.save
    archive (stored, as its own) that the weights-only loader reads: then torch's first try succeeds too."""
    source = io.BytesIO(data)
    try:
        agreed_directory(source)
        source.seek(0)
        torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # anything the readers raise: the file is refused all the same
        reason = printable(first_sentence(str(error).split("WeightsUnpickler error:")[-1])) or type(error).__name__
        raise refused(
            path, f"its sample inputs {SAMPLE_INPUTS} are not tensors that PyTorch's weights-only loader reads "
            f"({reason}), and torch.export.load would then unpickle them in full, running any code they hold"
        ) from None  # fmt: skip
