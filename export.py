"""The network of a checkpoint as a file other tools run: ONNX (ONNX Runtime, TensorRT, Triton) or
torch.export's .pt2 (PyTorch's own deployment format), checked to give the checkpoint's logits.

    >>> from checkpoints import load_checkpoint
    >>> from export import export_model, load_exported
    >>> model, meta = load_checkpoint("runs/shapes/best.pt")
    >>> report = export_model(model, meta, Path("shapes.onnx"))      # or shapes.pt2
    >>> report.max_difference                                         # largest |logit difference| measured
    2.4e-07
    >>> network, meta = load_exported("shapes.onnx")                  # for engine.predict, as a checkpoint

The exported network takes normalised float32 images (B, C, S, S), any batch size B, and returns
logits (B, num_classes); the preprocessing is not inside it but described beside it: the class
names, the EvalPreset (input side, resize side, mean, std, channels) and the model_config are one
JSON object, under the key "alexnet" of the ONNX file's metadata_props, or in the .pt2 archive as
the extra file "alexnet.json". `load_exported` reads it back, checked to make sense for the network
beside it (classes, input size, preprocessing), so that inference preprocesses an image for the
exported file exactly as for the checkpoint. Beside it, "alexnet.checksum" holds a CRC-32 of the
weights as written (checkpoints.checksum), which `load_exported` checks: a file damaged on a disk
or in a copy is one ExportError, not confident nonsense. And a .pt2 file is checked before
torch.export.load reads it (pt2_files.py): one that holds anything but what export_model writes
(pickled data, which torch would unpickle in full; compiled code; ...) is refused unread.

Before a file is kept, `export_model` runs it (ONNX through ONNX Runtime) on random inputs and on
rendered images (shapes.py, plus any images given), as a batch of one and as a larger batch, and
compares its logits with the checkpoint's: at most PARITY_TOLERANCE apart, or ExportError and no
file. It is written to a hidden temporary name beside the target and renamed only then.

onnx, onnxscript and onnxruntime are needed only for .onnx files, and imported only then: without
them, ExportError says what to install.
"""

import contextlib
import importlib.util
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet import AlexNet
from atomic_files import DiskFullError, out_of_space, tensor_bytes
from checkpoints import checksum, classes_problem
from display_text import shown
from errors import ExportError, first_sentence, library_warnings_off
from presets import EVAL_FIELDS, EvalPreset, eval_transform, preset_problem
from pt2_files import Pt2Contents, inspect_pt2
from shapes import make_shapes

EXPORT_FORMATS = (".onnx", ".pt2")
METADATA_KEY = "alexnet"  # the ONNX metadata_props key; the .pt2 extra file is METADATA_KEY + ".json"
CHECKSUM_KEY = "alexnet.checksum"  # beside it: a CRC-32 of the weights, verified when the file is read
METADATA_FORMAT = "alexnet-export-1"  # bumped if the metadata's meaning changes
PARITY_TOLERANCE = 1e-4  # largest |logit difference| allowed between the exported file and the checkpoint, fp32
PARITY_BATCH = 4  # the larger batch of the parity check (the other is a batch of one)
ONNX_PACKAGES = "onnx onnxscript onnxruntime"


@dataclass
class ExportReport:
    """What `export_model` wrote and measured."""

    path: Path
    size_bytes: int
    random_difference: float  # largest |logit difference| on random normal inputs
    image_difference: float  # the same on rendered (and given) images, preprocessed as inference does
    inputs: int  # how many inputs were compared, over both batch sizes

    @property
    def max_difference(self) -> float:
        return largest(self.random_difference, self.image_difference)


def largest(*values: float) -> float:
    """max(), but NaN if any value is NaN (Python's max keeps or drops a NaN depending on its place)."""
    return torch.tensor(values).max().item()


class OnnxRuntimeModel(nn.Module):
    """An ONNX file run by ONNX Runtime's CPU provider, called like the model: (B, C, S, S) -> logits.

    It has no parameters: engine.predict then feeds it CPU tensors."""

    def __init__(self, session: object) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: inputs})
        return torch.from_numpy(logits).to(images.device)


def export_format(path: Path) -> str:
    """The format a file name asks for, ".onnx" or ".pt2"; ExportError for any other extension."""
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ExportError(
            f"{path}: unknown export format {suffix or '(no extension)'}; name the file .onnx (ONNX) "
            "or .pt2 (torch.export)"
        )
    return suffix


def export_model(
    model: AlexNet,
    meta: dict,
    path: Path,
    images: list[torch.Tensor] | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """Write `model` (with meta's classes and preprocessing) to `path`, .onnx or .pt2, once its logits
    are checked against the model's on random inputs, rendered images and `images` (uint8 (C, H, W)).

    Raises ExportError (one line, naming the path) for an unknown extension, an unwritable path, a
    missing ONNX package, a failed export, or logits more than `tolerance` apart; nothing is left
    behind then.
    """
    path = Path(path)
    suffix = export_format(path)
    check_writable(path)
    if suffix == ".onnx":
        require_onnx(path, export=True)
    else:
        require_pt2_archive(path)
    device, training = next(model.parameters()).device, model.training
    model.cpu().eval()  # exported from the CPU, in fp32 as trained; put back where it was below
    metadata = export_metadata(model, meta)
    example = torch.randn(2, *input_shape(meta["preprocess"]))  # batch 2: a batch of 1 would be specialised
    tmp = partial_path(path)
    try:
        # The plain model: speedups.fast_forward's fold depends on the batch size, a Python branch that
        # torch.export would trace once, for the example batch, and keep for every batch size.
        write_exported(model, example, metadata, tmp, path)
        random_difference, image_difference, count = parity(model, meta, tmp, images or [])
        difference = largest(random_difference, image_difference)
        if not difference <= tolerance:  # NaN fails too
            raise ExportError(
                f"{path}: the exported network differs from the checkpoint by up to {difference:.3g} in a logit "
                f"(random inputs {random_difference:.3g}, images {image_difference:.3g}; at most {tolerance:g} "
                "allowed); nothing written"
            )
        try:
            os.replace(tmp, path)
        except OSError as error:  # e.g. a directory of that name made meanwhile, a folder made read-only
            raise cannot_write(path, error) from None
    finally:
        with contextlib.suppress(OSError):  # a temporary file that cannot be removed must not hide why
            tmp.unlink(missing_ok=True)
        model.to(device).train(training)
    return ExportReport(path, path.stat().st_size, random_difference, image_difference, count)


NAME_MAX = 255  # bytes in a file name (Linux, macOS and Windows file systems alike)


def partial_path(path: Path) -> Path:
    """The temporary file an export is written to: hidden, beside the target (the rename cannot fail), this
    process's own (two exports never meet), and a valid name however long the target's: ".STEM.PID.partial.pt2",
    STEM cut short (whole characters) to keep it within NAME_MAX bytes."""
    tail = f".{os.getpid()}.partial{path.suffix}"
    stem = path.stem
    while len(os.fsencode(f".{stem}{tail}")) > NAME_MAX:
        stem = stem[:-1]
    return path.with_name(f".{stem}{tail}")


def cannot_write(path: Path, error: OSError) -> ExportError:
    return ExportError(f"{path}: cannot write it ({error.strerror or error}); choose another path")


def check_writable(path: Path) -> None:
    """ExportError unless a file can be created at `path` (before minutes are spent exporting)."""
    if len(os.fsencode(path.name)) > NAME_MAX:  # first: asking the file system about it fails too (ENAMETOOLONG)
        raise ExportError(
            f"{path}: cannot write there: its name is {len(os.fsencode(path.name))} bytes, more than the {NAME_MAX} "
            "a file name can have; choose a shorter name"
        )
    if path.is_dir():
        raise ExportError(f"{path}: is a directory; give a file name ending in {' or '.join(EXPORT_FORMATS)}")
    folder = path.parent
    if not folder.is_dir():
        reason = "is a file, not a directory" if folder.exists() else "no such directory"
        raise ExportError(f"{path}: cannot write there: {folder} {reason}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{path}: cannot write there: no permission to create files in {folder}")


def require_onnx(path: Path, export: bool) -> None:
    """ExportError naming what to install when an ONNX package is missing (imported only for ONNX)."""
    packages = ["onnx", "onnxscript", "onnxruntime"] if export else ["onnxruntime"]
    for package in packages:
        try:
            __import__(package)
        except ImportError:
            needs = ONNX_PACKAGES if export else "onnxruntime"
            raise ExportError(
                f"{path}: {'writing' if export else 'running'} ONNX files needs the {package} package, which is not "
                f"installed: pip install {needs} (or pip install -r requirements.txt)"
            ) from None


def input_shape(preprocess: EvalPreset) -> tuple[int, int, int]:
    return preprocess.in_channels, preprocess.image_size, preprocess.image_size


def export_metadata(model: AlexNet, meta: dict) -> str:
    """The JSON that travels with the exported file: what inference needs to preprocess and name classes."""
    preprocess = meta["preprocess"]
    return json.dumps(
        {
            "format": METADATA_FORMAT,
            "classes": list(meta["classes"]),
            "preprocess": asdict(preprocess),
            "model_config": model.config,
            "input": {"name": "images", "shape": ["batch", *input_shape(preprocess)], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(meta["classes"])]},
        }
    )


def dynamic_batch() -> tuple[dict, ...]:
    """The dynamic_shapes argument of both exporters: dimension 0 of the input is any batch size."""
    return ({0: torch.export.Dim("batch", min=1)},)


# Warnings torch prints about its own code as it exports or loads (regular expressions of their start):
# torch 2.11's torch.export on its own pytree classes, its .pt2 reader on its own read-only buffers, and
# torch.export.save on weights in channels_last (as trained), whose bytes it writes whole all the same.
LIBRARY_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The given buffer is not writable, and PyTorch does not support non-writable tensors",
    r"No complete tensor found in the group",
)


def write_exported(network: nn.Module, example: torch.Tensor, metadata: str, tmp: Path, path: Path) -> None:
    """Export `network` to `tmp` in `path`'s format; every failure one ExportError naming `path`."""
    suffix = path.suffix.lower()
    try:
        with torch.no_grad(), library_warnings_off(*LIBRARY_WARNINGS):
            (write_onnx if suffix == ".onnx" else write_pt2)(network, example, metadata, tmp)
    except Exception as error:  # the exporters raise many types; one line is what the user needs
        if out_of_space(error):  # an OSError, or torch.export.save's RuntimeError raised while handling one
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)  # first: the message then says how much is free without it
            full = DiskFullError(path, written, needed=tensor_bytes(network.state_dict()))  # the weights: the bulk
            raise ExportError(str(full)) from None
        if isinstance(error, OSError):
            raise cannot_write(path, error) from None
        exporter = "torch.onnx.export" if suffix == ".onnx" else "torch.export"
        raise ExportError(f"{path}: {exporter} failed ({type(error).__name__}: {first_sentence(str(error))})") from None


def write_pt2(network: nn.Module, example: torch.Tensor, metadata: str, tmp: Path) -> None:
    """torch.export the network with a dynamic batch and save it, the metadata as an extra file."""
    program = torch.export.export(network, (example,), dynamic_shapes=dynamic_batch())
    extra_files = {f"{METADATA_KEY}.json": metadata, CHECKSUM_KEY: program_checksum(program)}
    # Saved in memory first: when a write to a file fails (a full disk), torch.export.save's writer throws
    # again as it is destroyed, and that aborts the whole process. A file object, not a name: torch.export.save
    # would warn about the temporary name's suffix.
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra_files)
    with open(tmp, "wb") as file:
        file.write(buffer.getbuffer())


def program_checksum(program: torch.export.ExportedProgram) -> str:
    """CRC-32 of an exported program's weights (checkpoints.checksum)."""
    return checksum({"state_dict": dict(program.state_dict), "constants": dict(program.constants)})


def onnx_checksum(weights: dict[str, np.ndarray]) -> str:
    """CRC-32 of an ONNX model's weights, {initializer name: array} (checkpoints.checksum): one function for the
    weights about to be written (onnxscript's IR) and the ones read back (onnx's protobuf)."""
    return checksum({name: torch.from_numpy(array.copy()) for name, array in weights.items()})


def write_onnx(network: nn.Module, example: torch.Tensor, metadata: str, tmp: Path) -> None:
    """torch.onnx.export (the torch.export-based exporter) with a dynamic batch, the metadata in metadata_props."""
    program = torch.onnx.export(
        network,
        (example,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=dynamic_batch(),
        dynamo=True,
        verbose=False,
    )
    initializers = program.model.graph.initializers.items()  # the weights about to be written
    program.model.metadata_props[METADATA_KEY] = metadata
    program.model.metadata_props[CHECKSUM_KEY] = onnx_checksum({n: v.const_value.numpy() for n, v in initializers})
    program.save(str(tmp))


# ----------------------------------------------------------------------------------------------
# The parity check.


def parity(model: AlexNet, meta: dict, file: Path, images: list[torch.Tensor]) -> tuple[float, float, int]:
    """Largest |logit difference| between the exported `file` (read back as inference reads it) and
    `model`, on random inputs and on images -> (random, images, how many inputs were compared)."""
    network, _ = load_exported(file)
    random, pictures = parity_inputs(meta["preprocess"], images)
    differences = [largest_difference(model, network, inputs) for inputs in (random, pictures)]
    return differences[0], differences[1], 2 + len(random) + len(pictures)


def parity_inputs(preprocess: EvalPreset, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised model inputs (N, C, S, S): random normal ones, and rendered shapes (real-looking:
    gradients, edges, noise) with `images` (uint8 (C, H, W)), preprocessed by eval_transform."""
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(PARITY_BATCH, *input_shape(preprocess), generator=generator)
    rendered, _ = make_shapes(PARITY_BATCH, image_size=max(preprocess.resize_size, 67), seed=0)
    if preprocess.in_channels == 1:
        rendered = rendered.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
    pictures = [eval_transform(image, preprocess) for image in [*rendered, *images]]
    return random, torch.stack(pictures)


def largest_difference(model: AlexNet, network: nn.Module, inputs: torch.Tensor) -> float:
    """max |logit difference| over a batch of one and the whole batch (the exported batch is dynamic,
    and the checkpoint's AlexNet takes another path for larger batches: both are compared)."""
    with torch.no_grad():
        differences = [
            (network(batch).float() - reference_logits(model, batch)).abs().max() for batch in (inputs[:1], inputs)
        ]
    return torch.stack(differences).max().item()  # NaN if either is NaN


def reference_logits(model: AlexNet, inputs: torch.Tensor) -> torch.Tensor:
    """The checkpoint's logits, as inference computes them (AlexNet.forward, in eval mode)."""
    return model(inputs).float()


# ----------------------------------------------------------------------------------------------
# Reading an exported file back.


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """An exported file as (network, meta), like checkpoints.load_checkpoint: the network maps
    (B, C, S, S) to logits; meta holds "classes" and "preprocess" (an EvalPreset), from its metadata.

    .onnx files run on ONNX Runtime's CPU provider (whatever `device`). A .pt2 file is checked before torch
    reads it (pt2_files.py): one that holds anything but what export_model writes (pickled data, code) is
    refused unread. Raises ExportError, one line naming the path, for a missing or empty file, an unknown
    extension, a file the runtime cannot load or refused, a missing onnxruntime, or metadata that is not what
    export_model writes or makes no sense for the network (classes, preprocessing, input size).
    """
    path = Path(path)
    suffix = export_format(path)
    check_readable(path)
    if suffix == ".pt2":
        require_pt2_archive(path)
    network, meta, stored, computed = load_onnx(path) if suffix == ".onnx" else load_pt2(path, device)
    if stored is not None and stored != computed:
        raise damaged(path)
    return network, meta


def pt2_archive_supported() -> bool:
    """Whether this torch writes and reads the PT2 archive (torch.export.pt2_archive: weights as raw bytes),
    the only .pt2 layout pt2_files.py can check: older releases (torch 2.5) pickle the weights into the file."""
    return importlib.util.find_spec("torch.export.pt2_archive") is not None


def require_pt2_archive(path: Path) -> None:
    if not pt2_archive_supported():
        raise ExportError(
            f"{path}: torch {torch.__version__} writes and reads .pt2 files in its older layout, whose weights "
            "are unpickled when read (code could run): refused; use .onnx, or a newer torch for .pt2"
        )


def damaged(path: Path) -> ExportError:
    return ExportError(
        f"{path}: damaged: its weights are not the ones written (their checksum differs: bytes changed on the "
        "disk or in a copy); copy it again or export it again from its checkpoint"
    )


def check_readable(path: Path) -> None:
    if not path.exists():
        raise ExportError(f"{path}: no such file")
    if path.is_dir():
        raise ExportError(f"{path}: is a directory, not an exported network")
    if path.stat().st_size == 0:
        raise ExportError(f"{path}: empty file (0 bytes); was it written or copied completely?")


def load_onnx(path: Path) -> tuple[nn.Module, dict, str | None, str | None]:
    """(the network on ONNX Runtime, its meta, the checksum stored, the checksum of its weights)."""
    require_onnx(path, export=False)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same thread budget as torch
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types: InvalidProtobuf, Fail, ...
        reason = first_sentence(str(error).split(" : ")[-1].split("failed:")[-1])  # without the path again
        raise ExportError(f"{path}: not an ONNX model that ONNX Runtime can load ({reason})") from None
    properties = session.get_modelmeta().custom_metadata_map
    inputs, outputs = ([dims(node.shape) for node in nodes] for nodes in (session.get_inputs(), session.get_outputs()))
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{path}: its network takes {len(inputs)} inputs and gives {len(outputs)}, not one each")
    meta, _ = meta_from_metadata(properties.get(METADATA_KEY), path, inputs[0], outputs[0])
    stored = properties.get(CHECKSUM_KEY)
    computed = stored
    if stored is not None and importlib.util.find_spec("onnx") is not None:  # in requirements.txt; else unchecked
        import onnx  # ONNX Runtime does not show the weights: read them once more
        from onnx import numpy_helper

        initializers = onnx.load(str(path)).graph.initializer
        computed = onnx_checksum({init.name: numpy_helper.to_array(init) for init in initializers})
    return OnnxRuntimeModel(session), meta, stored, computed


def dims(shape: list) -> tuple[int | None, ...]:
    """An ONNX Runtime shape, None for each dynamic size (named, as "batch")."""
    return tuple(size if isinstance(size, int) else None for size in shape)


PT2_EXTRA_FILES = (f"{METADATA_KEY}.json", CHECKSUM_KEY)


def load_pt2(path: Path, device: str | torch.device) -> tuple[nn.Module, dict, str | None, str | None]:
    """(the network, its meta, the checksum stored, the checksum of its weights). The archive is checked
    (inspect_pt2) as it is on the disk, before it is read whole, and again as read: torch then reads the very
    bytes that were checked, whatever happens to the file meanwhile."""
    try:
        with open(path, "rb") as file:
            contents, _ = checked_pt2(file, path)
            size = file.seek(0, io.SEEK_END)
            file.seek(0)
            data = file.read(size + 1)
    except OSError as error:
        raise ExportError(f"{path}: cannot read it ({error.strerror or error})") from None
    as_read, meta = checked_pt2(io.BytesIO(data), path)
    if len(data) != size or as_read != contents:
        raise ExportError(f"{path}: changed while it was read; read it again once nothing writes it")
    logger = logging.getLogger("torch.export")  # which logs a traceback before raising on a bad file
    level = logger.level
    extra_files = dict.fromkeys(PT2_EXTRA_FILES, "")
    try:
        logger.setLevel(logging.ERROR)
        with library_warnings_off(*LIBRARY_WARNINGS):
            program = torch.export.load(io.BytesIO(data), extra_files=extra_files)
    except Exception as error:  # what the checks cannot see: an operator this torch lacks, a graph that fails
        if "Bad CRC-32" in str(error):  # older torch checks the archive's own checksums as it reads
            raise damaged(path) from None
        reason = f"{type(error).__name__}: {first_sentence(str(error))}"
        raise ExportError(f"{path}: not a .pt2 file that torch.export.load can read ({reason})") from None
    finally:
        logger.setLevel(level)
    del data  # the weights are in the program now
    stored = contents.extra.get(CHECKSUM_KEY) or None
    computed = program_checksum(program) if stored is not None else None
    return program.module().to(device), meta, stored, computed


def checked_pt2(source: io.BufferedIOBase, path: Path) -> tuple[Pt2Contents, dict]:
    """(the contents, the meta) of a .pt2 archive that holds only what export_model writes (inspect_pt2), with
    metadata that makes sense for its network, whose weights are the ones its model_config describes."""
    contents = inspect_pt2(source, path, PT2_EXTRA_FILES)
    meta, network = meta_from_metadata(
        contents.extra.get(PT2_EXTRA_FILES[0]), path, contents.input_shape, contents.output_shape
    )
    expected = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}
    differences = [
        name for name in {**expected, **contents.weights} if expected.get(name) != contents.weights.get(name)
    ]
    if differences:
        name = differences[0]
        raise ExportError(
            f"{path}: its weights are not those of its model_config {shown(network.config)}: {name} has shape "
            f"{contents.weights.get(name)} in the file, {expected.get(name)} in the model"
        )
    return contents, meta


def meta_from_metadata(
    metadata: str | bytes | None, path: Path, input_shape: list | tuple, output_shape: list | tuple
) -> tuple[dict, AlexNet]:
    """The "classes" and "preprocess" (EvalPreset) of an exported file's JSON metadata, checked for sense
    (classes_problem, preset_problem) and against the network's input (None, C, S, S) and output (None, classes)
    shapes; and the network its model_config describes (on the meta device: shapes only)."""
    if not metadata:
        raise ExportError(
            f"{path}: has no {METADATA_KEY!r} metadata (the class names and preprocessing): not a file "
            "written by inference.py --export"
        )
    try:
        data = json.loads(metadata)
        values, classes, config = data["preprocess"], data["classes"], data["model_config"]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise ExportError(
            f"{path}: its {METADATA_KEY!r} metadata is not what this exporter writes "
            f"({type(error).__name__}: {first_sentence(str(error))})"
        ) from None
    network = described_network(config, path)
    problem = classes_problem(classes, network.config["num_classes"], unique=False)
    problem = problem or preset_problem(values, network.min_input_size)
    if problem:
        raise ExportError(f"{path}: {problem}")
    preprocess = EvalPreset(**{field: values[field] for field in EVAL_FIELDS})
    check_shapes(preprocess, len(classes), tuple(input_shape), tuple(output_shape), path)
    return {"classes": list(classes), "preprocess": preprocess}, network


def described_network(config: object, path: Path) -> AlexNet:
    """The AlexNet an export's model_config describes, on the meta device; ExportError if it describes none."""
    try:
        with torch.device("meta"):
            return AlexNet(**config)
    except Exception as error:  # not a dict (TypeError), unknown keyword, impossible sizes (ValueError, ...)
        raise ExportError(
            f"{path}: model_config = {shown(config)}: does not describe an AlexNet "
            f"({type(error).__name__}: {first_sentence(str(error))})"
        ) from None


def check_shapes(preprocess: EvalPreset, classes: int, inputs: tuple, outputs: tuple, path: Path) -> None:
    """ExportError unless the network takes (any batch, in_channels, image_size, image_size) and gives (any batch,
    one logit per class): the metadata must describe the network beside it."""
    if len(inputs) != 4 or inputs[0] is not None or len(outputs) != 2 or outputs[0] is not None:
        raise ExportError(f"{path}: its network takes {inputs} and gives {outputs}, not a batch of images and logits")
    if inputs[1] != preprocess.in_channels:
        raise ExportError(
            f"{path}: preprocess.in_channels = {preprocess.in_channels}: the network takes {inputs[1]} channels"
        )
    if inputs[2:] != (preprocess.image_size, preprocess.image_size):
        raise ExportError(
            f"{path}: preprocess.image_size = {preprocess.image_size}: the network takes {inputs[2]} x {inputs[3]} "
            "inputs"
        )
    if outputs[1] != classes:
        raise ExportError(f"{path}: has {classes} classes but its network {outputs[1]} outputs")
