"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) in plain PyTorch.

    >>> from alexnet import AlexNet
    >>> model = AlexNet(num_classes=10, in_channels=1)    # e.g. MNIST
    >>> model(torch.randn(8, 1, 224, 224)).shape          # logits, no softmax
    torch.Size([8, 10])

Three ways to build it:

    AlexNet(num_classes, in_channels)              # default: the paper's layer sizes, modern init
    AlexNet.paper(num_classes, in_channels)        # as the paper describes it: LRN, two towers,
                                                   #   N(0, 0.01) weights with unit biases
    AlexNet.torchvision(num_classes, in_channels)  # torchvision's layout (64-192-384-256-256)

Every option is also a constructor argument (`layout`, `lrn`, `groups`, `init`), the presets
accept overrides (e.g. `AlexNet.paper(10, init="he")`), and `model.config` holds them all, so
`AlexNet(**model.config)` rebuilds any of them (checkpoints store it).

The default layout is the classic single-tower network of the paper (96-256-384-384-256 conv
channels, 4096-4096 hidden units), without the paper's local response normalisation and two-GPU
grouping (see the departures marked "PAPER:" below).

Torchvision's pretrained weights: the torchvision layout has torchvision's module structure, so
its state_dict keys (features.0.weight, ..., classifier.1.weight, classifier.4.weight,
classifier.6.weight) load as they are. `AlexNet.from_torchvision` builds the model and loads them:

    >>> from torchvision.models import alexnet, AlexNet_Weights
    >>> state_dict = alexnet(weights=AlexNet_Weights.IMAGENET1K_V1).state_dict()
    >>> model = AlexNet.from_torchvision(state_dict)                  # ImageNet's 1000 classes
    >>> model = AlexNet.from_torchvision(state_dict, num_classes=10)  # fine-tune: a new last layer

(`torch.load("alexnet-owt-7be5be79.pth")`, torchvision's downloaded file, works as well.)

The 224 / 227 story: the paper says its input is 224x224, but with an 11x11 stride-4 conv1 and no
padding, 224 gives (224 - 11) / 4 + 1 = 54.25, not the 55x55 the paper draws. 227 is the size that
makes the arithmetic work ((227 - 11) / 4 + 1 = 55 -> 27 -> 13 -> 6 after the three max-pools),
which is why Caffe's AlexNet takes 227x227 crops; torchvision instead pads conv1 by 2 so that 224
works. Here no input size is hard-coded: the last feature map is pooled to 6x6 before the
classifier, so 227 gives exactly the paper's 6x6 map, 224 gives a 5x5 map that is stretched to 6x6,
and smaller upscaled images (CIFAR, MNIST) give 1x1 to 5x5 maps. The smallest input is 67x67
(63x63 for the torchvision layout; `model.min_input_size` says which).

This file is the network as the paper draws it, and nothing else. The speed-ups that training,
evaluation and the benchmarks use live in speedups.py: `fast_forward(model)` computes the same
function faster (fc6 folded through the pooling on small inputs, 1.56x per step at 67 px) and
pools by matrix products where PyTorch's adaptive pooling cannot be used (Apple's MPS at 224 px,
deterministic CUDA). On MPS, call `fast_forward(model)(x)` rather than `model(x)`.
"""

from collections.abc import Mapping

import torch
from torch import nn

MIN_INPUT_SIZE = 67  # the smallest square input whose last feature map is at least 1x1
TORCHVISION_MIN_INPUT_SIZE = 63  # the same for the torchvision layout, whose conv1 pads by 2

LAYOUTS = ("paper", "torchvision")
INITS = ("he", "paper", "caffe")
# The architectures the scripts' --model names, as constructor arguments (the weights' init is separate: --init).
MODELS = {"default": {}, "paper": {"lrn": True, "groups": 2}, "torchvision": {"layout": "torchvision"}}


def feature_map_size(image_size: int, layout: str = "paper") -> int:
    """Side of the last feature map (before the 6x6 pooling) for a square input of `image_size`.

    Below 1, the input is too small for that layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    padding = 2 if layout == "torchvision" else 0
    size = (image_size + 2 * padding - 11) // 4 + 1  # conv1, 11x11 stride 4
    for _ in range(3):  # three overlapping max-pools, 3x3 stride 2 (convs 2-5 keep the size)
        size = (size - 3) // 2 + 1
    return size


def check_input_size(x: torch.Tensor, min_size: int) -> None:
    """ValueError, saying what to do, for an input smaller than the network accepts."""
    if x.shape[-1] < min_size or x.shape[-2] < min_size:
        raise ValueError(
            f"AlexNet needs inputs of at least {min_size}x{min_size} pixels, "
            f"got {tuple(x.shape[-2:])}: upscale the images to at least that size"
        )


def norm(lrn: bool) -> list[nn.Module]:
    """Local response normalisation, if asked for (it keeps the shape)."""
    # The paper's n = 5, alpha = 1e-4, beta = 0.75, k = 2. nn.LocalResponseNorm divides
    # alpha by n, exactly as Krizhevsky's own cuda-convnet code does, so this matches the
    # original code (the paper's formula writes alpha without the /n). The public
    # cuda-convnet and Caffe's bvlc_alexnet use k = 1 instead of the paper's 2.
    return [nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)] if lrn else []


def make_features(in_channels: int, channels: tuple[int, ...], padding1: int, lrn: bool, groups: int) -> nn.Sequential:
    """The five convolutions with their ReLUs, LRN and max-pools."""
    c1, c2, c3, c4, c5 = channels
    # PAPER: the paper follows the ReLUs of conv1 and conv2 with local response normalisation
    # and splits conv2, conv4 and conv5 into two groups, one per GPU (lrn=True, groups=2, as
    # in AlexNet.paper()). The default leaves both out, as every modern reimplementation does:
    # LRN costs time for little accuracy, and the grouping was a memory workaround for 3 GB
    # GPUs. With groups=2, each half of conv2, conv4 and conv5 sees only its own tower's half
    # of the channels below it; conv3 and the FC layers see both towers.
    # Shapes below are for the paper layout at 227x227; the torchvision layout at 224x224
    # has the same spatial sizes (55, 27, 13, 6) with its own channel counts.
    return nn.Sequential(
        # (B, C, 227, 227) -> (B, 96, 55, 55)
        nn.Conv2d(in_channels, c1, kernel_size=11, stride=4, padding=padding1),
        nn.ReLU(inplace=True),
        *norm(lrn),  # LRN keeps the shape
        nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping pooling -> (B, 96, 27, 27)
        nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=groups),  # -> (B, 256, 27, 27)
        nn.ReLU(inplace=True),
        *norm(lrn),
        nn.MaxPool2d(kernel_size=3, stride=2),  # -> (B, 256, 13, 13)
        nn.Conv2d(c2, c3, kernel_size=3, padding=1),  # -> (B, 384, 13, 13)
        nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=groups),  # -> (B, 384, 13, 13)
        nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=groups),  # -> (B, 256, 13, 13)
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # -> (B, 256, 6, 6)
    )


def make_classifier(c5: int, num_classes: int, dropout: float, layout: str) -> nn.Sequential:
    """The three fully connected layers with their ReLUs and dropouts."""
    if layout == "paper":
        return nn.Sequential(
            nn.Linear(c5 * 6 * 6, 4096),  # (B, 9216) -> (B, 4096)
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),  # -> (B, num_classes)
        )
    else:
        # PAPER: torchvision drops out the inputs of fc6 and fc7, where the paper drops out
        # the outputs of fc6 and fc7. Same modules in torchvision's order, so that torchvision's
        # keys (classifier.1, classifier.4, classifier.6) load as they are.
        return nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * 6 * 6, 4096),  # (B, 9216) -> (B, 4096)
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),  # -> (B, num_classes)
        )


class AlexNet(nn.Module):
    """AlexNet: five conv layers and three fully connected layers, returning logits.

    Args:
        num_classes: size of the last layer (1000 for ImageNet).
        in_channels: 3 for RGB, 1 for grayscale (MNIST).
        dropout: dropout probability on the two hidden FC layers (0.5 in the paper).
        layout: "paper" (96-256-384-384-256 channels, conv1 unpadded) or "torchvision"
            (64-192-384-256-256 channels, conv1 padded by 2, torchvision's module order).
        lrn: local response normalisation after the ReLUs of conv1 and conv2, as in the paper.
        groups: 2 splits conv2, conv4 and conv5 into the paper's two towers (one per GPU).
        init: "he" (default), "paper" or "caffe"; see `reset_parameters`.

    Input (B, in_channels, H, W) with H, W >= `self.min_input_size` (67, or 63 for the
    torchvision layout); output (B, num_classes) logits.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
        layout: str = "paper",
        lrn: bool = False,
        groups: int = 1,
        init: str = "he",
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        # Everything needed to rebuild this model; checkpoints store it.
        self.config = {
            "num_classes": num_classes,
            "in_channels": in_channels,
            "dropout": dropout,
            "layout": layout,
            "lrn": lrn,
            "groups": groups,
            "init": init,
        }
        self.min_input_size = MIN_INPUT_SIZE if layout == "paper" else TORCHVISION_MIN_INPUT_SIZE
        if layout == "paper":
            c1, c2, c3, c4, c5 = 96, 256, 384, 384, 256
            padding1 = 0
        else:
            # PAPER: torchvision's AlexNet (its docs cite Krizhevsky's 2014 "One weird trick"
            # paper) has 64-192-384-256-256 channels and pads conv1 by 2, so that 224x224 inputs
            # give the paper's 55x55 maps.
            c1, c2, c3, c4, c5 = 64, 192, 384, 256, 256
            padding1 = 2

        self.features = make_features(in_channels, (c1, c2, c3, c4, c5), padding1, lrn, groups)
        # PAPER: the paper's 227 px input gives a 6x6 map by construction and has no such layer. Pooling
        # the last map to 6x6 accepts any input size (see the module docstring); at 227 it does nothing.
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = make_classifier(c5, num_classes, dropout, layout)
        self.reset_parameters()

    @classmethod
    def paper(cls, num_classes: int = 1000, in_channels: int = 3, **overrides) -> "AlexNet":
        """The network as the paper describes it: LRN after conv1 and conv2, two towers
        (groups=2 in conv2, conv4, conv5), N(0, 0.01) weights with unit biases. 60,965,224
        parameters at 1000 classes. Any constructor argument can be overridden, e.g. init="he".
        """
        options = {"lrn": True, "groups": 2, "init": "paper", **overrides}
        return cls(num_classes, in_channels, **options)

    @classmethod
    def torchvision(cls, num_classes: int = 1000, in_channels: int = 3, **overrides) -> "AlexNet":
        """torchvision.models.alexnet's network (61,100,840 parameters at 1000 classes), with
        this repository's He init unless overridden; its state_dict loads torchvision's weights.
        """
        options = {"layout": "torchvision", **overrides}
        return cls(num_classes, in_channels, **options)

    @classmethod
    def from_torchvision(
        cls, state_dict: Mapping[str, torch.Tensor], num_classes: int | None = None, dropout: float = 0.5
    ) -> "AlexNet":
        """The torchvision layout with torchvision's weights (e.g. `alexnet(weights=...).state_dict()`).

        With `num_classes` other than the weights' own (1000 for ImageNet), every layer but the
        last is loaded and the last one is freshly initialised, ready for fine-tuning.
        """
        pretrained_classes = state_dict["classifier.6.weight"].shape[0]
        if num_classes is None:
            num_classes = pretrained_classes
        model = cls.torchvision(num_classes, dropout=dropout)
        if num_classes != pretrained_classes:  # keep the new, freshly initialised last layer
            head = {k: v for k, v in model.state_dict().items() if k.startswith("classifier.6.")}
            state_dict = {**state_dict, **head}
        model.load_state_dict(state_dict)  # strict: every key must match
        return model

    def reset_parameters(self) -> None:
        """Initialise every layer as `self.config["init"]` says.

        "he" (the default): He (Kaiming) initialisation for every layer, zero biases, a small last
        layer, drawn small so that the loss at init is ln(num_classes).

        "paper": every weight from N(0, 0.01), the biases of conv2, conv4, conv5 and the hidden
        FC layers set to 1, the others to 0, as the paper describes.

        "caffe": Caffe's bvlc_alexnet (models/bvlc_alexnet/train_val.prototxt): N(0, 0.01)
        weights except fc6 and fc7 with N(0, 0.005), and biases of 0.1 instead of 1 in the same
        layers as the paper ("found necessary for training, as initialization to 1 gave flat
        loss", says its readme), 0 elsewhere.

        PAPER: the default is "he". In a network without normalisation, the paper's init (and
        PyTorch's default) shrinks the signal layer after layer: the logits start near zero and
        plain SGD sits at chance for hundreds of steps. He init keeps the signal's scale through
        the eight layers. Measured on the built-in dataset: torchvision's VGG init (He fan-out
        convs, N(0, 0.01) FC) stayed at chance for two epochs; He init learned from the first
        epoch, given a warm-up.
        """
        init = self.config["init"]
        conv1, conv2, conv3, conv4, conv5 = [m for m in self.features if isinstance(m, nn.Conv2d)]
        fc6, fc7, fc8 = [m for m in self.classifier if isinstance(m, nn.Linear)]
        layers = [conv1, conv2, conv3, conv4, conv5, fc6, fc7, fc8]
        if init == "he":
            for layer in layers:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
            nn.init.normal_(fc8.weight, std=0.001)
            return
        for layer in layers:
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        if init == "caffe":
            nn.init.normal_(fc6.weight, std=0.005)
            nn.init.normal_(fc7.weight, std=0.005)
        for layer in (conv2, conv4, conv5, fc6, fc7):
            nn.init.constant_(layer.bias, 1.0 if init == "paper" else 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.min_input_size)
        x = self.features(x)  # (B, C, 227, 227) -> (B, 256, 6, 6); (B, 256, h, w) for other sizes
        x = self.avgpool(x)  # (B, 256, h, w) -> (B, 256, 6, 6): the identity at 227
        x = torch.flatten(x, 1)  # (B, 256, 6, 6) -> (B, 9216)
        return self.classifier(x)  # (B, 9216) -> (B, num_classes)
