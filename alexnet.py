"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) in plain PyTorch.

    >>> from alexnet import AlexNet
    >>> model = AlexNet(num_classes=10, in_channels=1)    # e.g. MNIST
    >>> model(torch.randn(8, 1, 224, 224)).shape          # logits, no softmax
    torch.Size([8, 10])

The default layout is the classic single-tower network of the paper (96-256-384-384-256 conv
channels, 4096-4096 hidden units), without the paper's local response normalisation and two-GPU
grouping (see the departures marked "PAPER:" below).

The 224 / 227 story: the paper says its input is 224x224, but with an 11x11 stride-4 conv1 and no
padding, 224 gives (224 - 11) / 4 + 1 = 54.25, not the 55x55 the paper draws. 227 is the size that
makes the arithmetic work ((227 - 11) / 4 + 1 = 55 -> 27 -> 13 -> 6 after the three max-pools),
which is why Caffe's AlexNet takes 227x227 crops; torchvision instead pads conv1 by 2 so that 224
works. Here no input size is hard-coded: the last feature map is pooled to 6x6 before the
classifier, so 227 gives exactly the paper's 6x6 map, 224 gives a 5x5 map that is stretched to 6x6,
and smaller upscaled images (CIFAR, MNIST) give 1x1 to 5x5 maps. The smallest input is 67x67.
"""

import torch
import torch.nn.functional as F
from torch import nn

MIN_INPUT_SIZE = 67  # the smallest square input whose last feature map is at least 1x1


def feature_map_size(image_size: int) -> int:
    """Side of the last feature map (before the 6x6 pooling) for a square input of `image_size`."""
    size = (image_size - 11) // 4 + 1  # conv1, 11x11 stride 4, no padding
    for _ in range(3):  # three overlapping max-pools, 3x3 stride 2 (convs 2-5 keep the size)
        size = (size - 3) // 2 + 1
    return size


def adaptive_avg_pool_by_matmul(x: torch.Tensor, output_size: int) -> torch.Tensor:
    """Exactly `F.adaptive_avg_pool2d(x, output_size)`, computed as two small matrix products.

    Apple's MPS backend cannot adaptive-pool a map whose size is not a multiple of the output
    size (e.g. the 5x5 map of a 224 input); this formulation runs on any device.
    """

    def bins(n_in: int) -> torch.Tensor:
        # Row i averages inputs [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)),
        # the same bins PyTorch's adaptive pooling uses.
        weights = torch.zeros(output_size, n_in, dtype=x.dtype, device=x.device)
        for i in range(output_size):
            start = (i * n_in) // output_size
            end = -((-(i + 1) * n_in) // output_size)
            weights[i, start:end] = 1.0 / (end - start)
        return weights

    rows, cols = bins(x.shape[-2]), bins(x.shape[-1])
    return torch.einsum("oh,nchw,pw->ncop", rows, x, cols)  # (B, C, H, W) -> (B, C, 6, 6)


class AlexNet(nn.Module):
    """AlexNet: five conv layers and three fully connected layers, returning logits.

    Args:
        num_classes: size of the last layer (1000 for ImageNet).
        in_channels: 3 for RGB, 1 for grayscale (MNIST).
        dropout: dropout probability on the two hidden FC layers (0.5 in the paper).

    Input (B, in_channels, H, W) with H, W >= 67; output (B, num_classes) logits.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        # Everything needed to rebuild this model; checkpoints store it.
        self.config = {"num_classes": num_classes, "in_channels": in_channels, "dropout": dropout}
        # PAPER: the paper follows the ReLUs of conv1 and conv2 with local response normalisation
        # and splits conv2, conv4 and conv5 into two groups, one per GPU. The default leaves both
        # out, as every modern reimplementation does: LRN costs time for little accuracy, and the
        # grouping was a memory workaround for 3 GB GPUs.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4),  # (B, C, 227, 227) -> (B, 96, 55, 55)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping pooling -> (B, 96, 27, 27)
            nn.Conv2d(96, 256, kernel_size=5, padding=2),  # -> (B, 256, 27, 27)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> (B, 256, 13, 13)
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # -> (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),  # -> (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # -> (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> (B, 256, 6, 6)
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming) initialisation for every layer, zero biases, a small last layer.

        PAPER: the paper draws every weight from N(0, 0.01) and sets the biases of conv2, conv4,
        conv5 and the hidden FC layers to 1. In a network without normalisation, that init (and
        PyTorch's default) shrinks the signal layer after layer: the logits start near zero and
        plain SGD sits at chance for hundreds of steps. He init keeps the signal's scale through
        the eight layers. The last layer is drawn small so the loss at init is ln(num_classes).
        Measured on the built-in dataset: torchvision's VGG init (He fan-out convs, N(0, 0.01) FC)
        stayed at chance for two epochs; this init learned from the first epoch, given a warm-up.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.classifier[-1].weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < MIN_INPUT_SIZE or x.shape[-2] < MIN_INPUT_SIZE:
            raise ValueError(
                f"AlexNet needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels, "
                f"got {tuple(x.shape[-2:])}: upscale the images (e.g. --image-size {MIN_INPUT_SIZE})"
            )
        x = self.features(x)  # (B, C, H, W) -> (B, 256, h, w), h = feature_map_size(H)
        if x.device.type == "mps" and (x.shape[-2] % 6 or x.shape[-1] % 6):
            x = adaptive_avg_pool_by_matmul(x, 6)  # MPS cannot adaptive-pool such sizes natively
        else:
            x = F.adaptive_avg_pool2d(x, 6)  # (B, 256, h, w) -> (B, 256, 6, 6); identity at 227
        x = torch.flatten(x, 1)  # (B, 256, 6, 6) -> (B, 9216)
        return self.classifier(x)  # (B, 9216) -> (B, num_classes)
