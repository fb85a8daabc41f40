"""Reading image files safely: any file in, a uint8 tensor or one BadImageError out.

Every image the project reads (training folders, inference inputs) goes through `open_image`:
regular files only, EPS refused (PIL would hand it to Ghostscript), decompression bombs refused
before decoding, truncated files caught, and PIL's many error types turned into one BadImageError
with a one-line reason. `pil_to_uint8` then handles every PIL mode and the EXIF orientation.
"""

import errno
import os
import re
import stat
import warnings
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import BadImageError, first_sentence

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# PIL hands EPS files to Ghostscript, an interpreter with a history of code-execution bugs, and
# recognises them by content, whatever the extension: never open one.
REFUSED_FORMATS = {"EPS"}
LINK_LOOP = "a symbolic link that loops (it leads back to itself)"


def pil_to_uint8(image: Image.Image, channels: int) -> torch.Tensor:
    """Any PIL image -> (channels, H, W) uint8, upright per its EXIF Orientation tag.

    1, L, P, RGB, CMYK, YCbCr, ... convert directly; 16-bit (I;16, I;16B, I) keep their top 8 bits
    (65535 -> 255, 32768 -> 128); transparency (RGBA, LA, PA, P or L/RGB with a transparent colour)
    is composited onto white. Multi-frame images (animated GIF) give their current frame.
    Raises ValueError for modes PIL cannot convert (e.g. La).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # convert("L") alone would clip every value above 255 to white. Going through "I" first
        # because point() does not support the big-endian I;16B of 16-bit TIFFs.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))  # transparent -> white
    image = image.convert("L" if channels == 1 else "RGB")
    return TF.pil_to_tensor(image)


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """Read an image file fully (a truncated file fails here, not later) -> (C, H, W) uint8.

    Raises BadImageError, and nothing else, for any file that cannot be read: missing, a
    directory, no permission, empty, not an image, corrupt or truncated, an unsupported mode, or
    more than PIL.Image.MAX_IMAGE_PIXELS pixels (a possible decompression bomb; refused before
    decoding). See pil_to_uint8 for the modes handled.
    """
    image = open_image(path)
    try:
        return pil_to_uint8(image, channels)
    except Exception as error:  # e.g. a mode PIL cannot convert
        raise BadImageError(f"{path}: {image_error_reason(error)}") from error
    finally:
        image.close()


def open_image(path: str | Path, draft_size: int | None = None, header_only: bool = False) -> Image.Image:
    """Open an image file with the checks of load_image; decoded unless `header_only` (then only
    .size and .mode are known). `draft_size`: JPEGs may be decoded at 1/2, 1/4 or 1/8 scale as
    long as both sides stay at least this large (libjpeg's DCT scaling: much faster for photos
    far larger than the model needs)."""
    path = Path(path)
    try:
        check_regular_file(path)
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=open_formats())
            try:
                if header_only:
                    return image
                if draft_size is not None and image.format == "JPEG":
                    image.draft(None, (draft_size, draft_size))
                image.load()
                return image
            except BaseException:
                image.close()
                raise
    except BadImageError:
        raise
    except Exception as error:  # PIL's decoders raise many types on bad data (see image_error_reason)
        raise BadImageError(f"{path}: {image_error_reason(error)}") from error


def check_regular_file(path: Path) -> None:
    """Raise BadImageError for a directory, a FIFO or device (opening one could block) or an empty file."""
    info = path.stat()  # FileNotFoundError, PermissionError: worded by image_error_reason
    if stat.S_ISDIR(info.st_mode):
        raise BadImageError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise BadImageError(f"{path}: not a regular file (a pipe or device?)")
    if info.st_size == 0:
        raise BadImageError(f"{path}: empty file (0 bytes), not an image; was it downloaded or copied completely?")


# What a file's directory entry alone (one stat, no byte read) can show: that it is no image (entry_problem).
# Each kind, as a summary line counts them, with the reason given for one such file.
ENTRY_PROBLEMS = {
    "empty": "empty file (0 bytes)",
    "looping links": LINK_LOOP,
    "broken links": "a broken symbolic link (what it points to is missing)",
    "not regular files": "not a regular file (a pipe or device?)",
    "unreadable": "permission denied: cannot read the file (check its permissions)",
}


def entry_problem(path: Path) -> str | None:
    """The kind of ENTRY_PROBLEMS that `path` is, from its directory entry alone (nothing read), or None: what
    lets a folder of thousands of empty files be refused before any is decoded. load_image finds the same."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "broken links" if path.is_symlink() else None  # (gone since it was listed: found when read)
    except OSError as error:
        return "looping links" if error.errno == errno.ELOOP else None
    if not stat.S_ISREG(info.st_mode):
        return "not regular files"
    if info.st_size == 0:
        return "empty"
    return None if os.access(path, os.R_OK) else "unreadable"


def open_formats() -> list[str]:
    """Every format this PIL can open, less REFUSED_FORMATS."""
    Image.init()  # registers all plugins; only the first call does any work
    return [name for name in Image.ID if name not in REFUSED_FORMATS]


def image_error_reason(error: Exception) -> str:
    """What went wrong reading an image, in words, from whatever PIL or the OS raised.

    Seen in practice: UnidentifiedImageError (not an image), OSError (truncated or broken data),
    SyntaxError and ValueError (malformed headers), EOFError, struct.error, IndexError, TypeError,
    MemoryError; plus DecompressionBombError/Warning for images over the pixel limit.
    """
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        pixels = re.search(r"\((\d+) pixels\)", str(error))  # PIL says "Image size (N pixels) exceeds limit of ..."
        size = f"{int(pixels[1]):,} pixels" if pixels else "too many pixels"
        return (
            f"refused as a possible decompression bomb: {size}, over the limit of {Image.MAX_IMAGE_PIXELS:,} "
            "(PIL.Image.MAX_IMAGE_PIXELS; raise it if the image is genuine)"
        )
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, PermissionError):
        return "permission denied: cannot read the file (check its permissions)"
    if isinstance(error, OSError) and error.errno == errno.ELOOP:
        return LINK_LOOP + "; remove or repoint it"
    if isinstance(error, UnidentifiedImageError):  # before OSError, its base class
        return "not an image (PIL recognises no image format in it; a text or other file with an image extension?)"
    if isinstance(error, OSError) and "truncated" in str(error):
        return "truncated image: the file ends early; was it downloaded or copied completely?"
    if isinstance(error, ValueError) and "conversion from" in str(error):
        return f"unsupported image mode ({first_sentence(str(error))})"
    return f"corrupt or unsupported image ({type(error).__name__}: {first_sentence(str(error)) or 'no details'})"


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Files as given; directories replaced by the image files they contain (sorted)."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        else:
            files.append(path)
    return files
