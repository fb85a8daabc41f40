"""AlexNet's forward pass computed faster, or where plain PyTorch cannot: the same function.

`alexnet.AlexNet.forward` is the network as the paper draws it: features, pooling to 6x6,
flatten, classifier. `fast_forward(model)` wraps such a model in a module that computes the same
outputs and gradients (tested against the plain forward, to float rounding) with two changes,
each measured on the 2-core development machine (AMD EPYC Zen 4, torch 2.14/2.15 on the CPU):

1. **fc6 folded through the pooling** (`fc6_weight_for_map`). Below 6x6 the pooling only copies
   and averages, and it is linear, so fc6(flatten(pool(x))) is one product with a folded weight.
   At 67 px the last map is 1x1 and the pooling copies each of its 256 numbers to 36 positions:
   the fold makes fc6 a 256-wide layer, 36 times cheaper. Measured: a 67 px, batch-256 training
   step went from 815 to 524 ms (1.56x, compute only) and `bench.py` at 67 px from 309.7 to
   535.6 img/s. Taken only when it costs fewer multiply-adds, and not while dropout acts between
   the pooling and fc6 (the torchvision layout in training), which would treat the 36 copies
   differently.
2. **Pooling by matrix products** (`adaptive_avg_pool_by_matmul`) where the map is not a multiple
   of 6 (e.g. 5x5 at 224 px) and adaptive pooling is unsupported or not deterministic: Apple's
   MPS backend refuses such sizes, and CUDA's backward of adaptive pooling is not deterministic
   (refused under torch.use_deterministic_algorithms). Two small matmuls compute exactly the
   same bins.

The wrapper shares the model's parameters (nothing is copied; checkpoints keep saving
`model.state_dict()`); it calls the model's `features` and `classifier` layers, so hooks on the
model itself do not run. Exports (export.py) use the plain model: the fold depends on the batch
size, and one exported graph serves every batch size.

    >>> forward = fast_forward(AlexNet(10))            # train, evaluate and benchmark through this
    >>> forward(torch.randn(64, 3, 67, 67)).shape      # the same logits, fc6 36x cheaper
    torch.Size([64, 10])
"""

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import AlexNet, check_input_size


def pooling_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) matrix of adaptive average pooling along one axis: row i averages inputs
    [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)), the bins PyTorch's pooling uses."""
    weights = torch.zeros(n_out, n_in, dtype=dtype, device=device)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool_by_matmul(x: torch.Tensor, output_size: int) -> torch.Tensor:
    """Exactly `F.adaptive_avg_pool2d(x, output_size)`, computed as two small matrix products, on any device."""
    rows = pooling_matrix(x.shape[-2], output_size, x.dtype, x.device)
    cols = pooling_matrix(x.shape[-1], output_size, x.dtype, x.device)
    return torch.einsum("oh,nchw,pw->ncop", rows, x, cols)  # (B, C, H, W) -> (B, C, 6, 6)


def fc6_weight_for_map(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """fc6's weight folded through the 6x6 pooling, for a last feature map of height x width.

    Pooling is linear, so fc6(flatten(adaptive_avg_pool2d(x, 6))) equals
    F.linear(flatten(x), fc6_weight_for_map(fc6.weight, h, w), fc6.bias): the same function
    with the same gradients (autograd carries them back to the 9216-wide weight), but a
    (B, 256 * h * w) @ (256 * h * w, 4096) product instead of (B, 9216) @ (9216, 4096). For a
    1x1 map the fold sums the weight over the 36 positions.
    """
    out_features = weight.shape[0]
    weight = weight.view(out_features, -1, 6, 6)  # (4096, 9216) -> (4096, 256, 6, 6)
    if height == width == 1:
        return weight.sum((2, 3))  # -> (4096, 256)
    rows = pooling_matrix(height, 6, weight.dtype, weight.device)  # (6, h)
    cols = pooling_matrix(width, 6, weight.dtype, weight.device)  # (6, w)
    folded = torch.einsum("ocij,ih,jw->ochw", weight, rows, cols)  # -> (4096, 256, h, w)
    return folded.reshape(out_features, -1)  # -> (4096, 256 * h * w)


def pool_to_6x6(x: torch.Tensor) -> torch.Tensor:
    """The model's 6x6 average pooling, by matrix products where PyTorch's cannot be used."""
    uneven = x.shape[-2] % 6 or x.shape[-1] % 6
    if uneven and (x.device.type == "mps" or x.is_cuda and torch.are_deterministic_algorithms_enabled()):
        return adaptive_avg_pool_by_matmul(x, 6)
    return F.adaptive_avg_pool2d(x, 6)


class FastForward(nn.Module):
    """An AlexNet's forward pass with the speed-ups above; `self.model` is the plain network."""

    def __init__(self, model: AlexNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        check_input_size(x, model.min_input_size)
        x = model.features(x)  # (B, C, H, W) -> (B, 256, h, w)
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        # Fold when it costs fewer multiply-adds: batch * 256 * (36 - h * w) saved per output unit
        # against 256 * 36 * h * w spent on folding the weight.
        fc6_index = 0 if model.config["layout"] == "paper" else 1
        dropout_before_fc6 = fc6_index == 1 and model.training and model.classifier[0].p > 0
        if batch * (36 - height * width) > 36 * height * width and not dropout_before_fc6:
            fc6 = model.classifier[fc6_index]
            x = F.linear(torch.flatten(x, 1), fc6_weight_for_map(fc6.weight, height, width), fc6.bias)
            return model.classifier[fc6_index + 1 :](x)  # (B, 4096) -> (B, num_classes)
        x = pool_to_6x6(x)  # -> (B, 256, 6, 6)
        return model.classifier(torch.flatten(x, 1))  # (B, 9216) -> (B, num_classes)


def fast_forward(model: nn.Module) -> nn.Module:
    """`FastForward(model)` for an AlexNet; any other module (an exported network, one already wrapped) as it is."""
    return FastForward(model) if isinstance(model, AlexNet) else model
