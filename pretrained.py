"""torchvision's pretrained ImageNet AlexNet (IMAGENET1K_V1), loaded into this repository's AlexNet.

The file is fetched through torchvision's own API into torch's cache ($TORCH_HOME/hub/checkpoints/,
by default ~/.cache/torch/hub/checkpoints/) once; offline, DownloadError says which file to copy
where. train.py fine-tunes from it (--pretrained imagenet); inference.py classifies with it
(--weights imagenet).
"""

import contextlib
import sys
from dataclasses import replace
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlparse

import torch

from alexnet import AlexNet
from checkpoints import check_weights, checkpoint_error_reason
from errors import CheckpointError, DownloadError, first_sentence
from imagenet import imagenet_wnids
from presets import IMAGENET_PRESET


def imagenet_weights():
    """torchvision's AlexNet_Weights.IMAGENET1K_V1 (its URL, class names, and the file's cache location)."""
    from torchvision.models import AlexNet_Weights  # imported here: torchvision.models is slow to import

    return AlexNet_Weights.IMAGENET1K_V1


def imagenet_cache_path() -> Path:
    """Where torch's cache keeps the IMAGENET1K_V1 file: $TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth
    (by default ~/.cache/torch/...), the file name from the weights' URL, as torch.hub names it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(imagenet_weights().url).path).name


def imagenet_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet AlexNet weights (IMAGENET1K_V1) as a state_dict for
    `AlexNet.from_torchvision` (train.py fine-tunes from it).

    Fetched through torchvision's own API, which reads the file from torch's cache (see
    imagenet_cache_path) or downloads it there first (233 MB; `progress` shows a bar on stderr).
    Read with weights_only=True like any checkpoint. Raises DownloadError (one line: the URL and
    the cache path to copy the file to) when the file is not cached and cannot be downloaded, and
    CheckpointError when the cached file is unusable (truncated, not these weights).
    """
    weights = imagenet_weights()
    path = imagenet_cache_path()
    try:
        # torch.hub announces a download on stdout: keep stdout for the results (--json).
        with contextlib.redirect_stdout(sys.stderr):
            state_dict = weights.get_state_dict(progress=progress, weights_only=True)
    except Exception as error:
        if (
            not path.is_file()
        ):  # nothing cached (torch.hub moves a download into place only once complete): no network, HTTP error, ...
            reason = (
                error if isinstance(error, HTTPError) else getattr(error, "reason", None) or error
            )  # URLError wraps the socket error
            reason = first_sentence(str(reason)) or type(error).__name__
            raise DownloadError(
                f"{path}: torchvision's ImageNet weights are not cached here and downloading them failed "
                f"({reason}); without network, fetch {weights.url} elsewhere and copy it to this path"
            ) from None
        if isinstance(error, OSError):  # e.g. no permission to read the cached file
            raise CheckpointError(
                f"{path}: cannot read it ({first_sentence(str(error)) or type(error).__name__})"
            ) from None
        # torch.load's errors on a truncated, corrupt or unsafe file
        raise CheckpointError(
            f"{path}: {checkpoint_error_reason(path, error)}; delete it to download it again"
        ) from None
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"{path}: holds a {type(state_dict).__name__}, not a state_dict; delete it to download it again"
        )
    with torch.device("meta"):  # shapes only: building the 61M-parameter model for real would cost time and memory
        expected = AlexNet.torchvision()
    check_weights(expected, state_dict, path)
    return state_dict


def load_imagenet_weights(device: str | torch.device = "cpu", progress: bool = True) -> tuple[AlexNet, dict]:
    """torchvision's pretrained AlexNet (IMAGENET1K_V1) in this repository's AlexNet, in eval mode
    on `device`, with meta like load_checkpoint's: ImageNet's 1000 class names as torchvision ships
    them ("tench", "goldfish", ...), their WordNet ids ("n01440764", ...: the names a model trained
    on ImageNet here carries too) and IMAGENET_PRESET. Raises DownloadError or
    CheckpointError as imagenet_state_dict does.
    """
    model = AlexNet.from_torchvision(imagenet_state_dict(progress))
    classes = list(imagenet_weights().meta["categories"])
    meta = {"classes": classes, "ids": imagenet_wnids(), "preprocess": replace(IMAGENET_PRESET)}
    return model.to(device).eval(), meta
