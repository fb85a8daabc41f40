"""Every error the library raises: typed, with a one-line message that names the file or setting.

The scripts (train.py, inference.py, bench.py) catch these and print `error: ...` with the
command-line flag that set the value; the library itself never names flags or exits. And the
other side of it: the warnings libraries print about their own code, kept off the user's terminal.
"""

import contextlib
import warnings
from collections.abc import Iterator


class BadImageError(ValueError):
    """An image file that cannot be read: missing, a directory, unreadable, empty, not an image,
    corrupt, truncated, too large (a possible decompression bomb) or in an unsupported mode.

    The message is one line, "PATH: what is wrong". Training skips and counts such files;
    inference reports them and classifies the rest.
    """


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, not a checkpoint, truncated, refused as unsafe
    (it would run code when unpickled), missing keys, or weights that do not fit its model_config.

    The message is one line, "PATH: what is wrong". Nothing is loaded when it is raised.
    """


class DownloadError(CheckpointError):
    """Pretrained weights that are not in torch's cache and cannot be downloaded (no network, a
    proxy, an HTTP error). The message is one line naming the cache path to copy the file to and
    the URL to fetch it from elsewhere.
    """


class ExportError(ValueError):
    """A network that cannot be exported, or an exported file that cannot be used: an unknown file
    extension, a path that cannot be written, an optional package (onnx, onnxscript, onnxruntime)
    that is not installed, an exported file whose logits differ from the checkpoint's, or a file
    that is not an export written by `export.export_model` (not ONNX or .pt2, or without its metadata).

    The message is one line, "PATH: what is wrong". A failed export leaves no file behind.
    """


class DataError(ValueError):
    """A dataset that cannot be used as asked: a folder in the wrong layout, a dataset that is not
    there, too many unreadable files, a setting the data does not allow.

    `setting` names the DataConfig field whose value is at fault (e.g. "data", "dataset",
    "max_bad_files"), so that a script can name its own flag; the message is one line.
    """

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


def first_sentence(text: str) -> str:
    """The first non-empty line of an error message, up to its first full stop: for one-line errors."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line.split(". ")[0].rstrip(".")


@contextlib.contextmanager
def library_warnings_off(*messages: str) -> Iterator[None]:
    """The warnings whose text starts as one of `messages` (regular expressions) kept off the user's terminal:
    a library's notes about its own code, nothing a user can act on. Any other warning still shows."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message)
        yield
