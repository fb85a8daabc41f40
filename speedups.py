"""AlexNet's forward pass computed faster, or where plain PyTorch cannot: the same function.

`alexnet.AlexNet.forward` is the network as the paper draws it: features, pooling to 6x6,
flatten, classifier. `fast_forward(model)` wraps such a model in a module that computes the same
outputs and gradients (tested against the plain forward, to float rounding) with three changes,
each measured on a 2-core machine (1 and 2: AMD EPYC Zen 4; 3: an Intel Xeon with AMX; torch 2.14):

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
3. **Small convolutions as one matrix product** (`conv2d_by_matmul`) on CPUs with AMX (Intel's
   matrix units, Sapphire Rapids and later) under bf16 autocast. At 67 px conv3-5 see 3x3 maps,
   where oneDNN's backward pass is slow, while a bf16 product runs on AMX at 1.3 TFLOP/s on 2
   cores (fp32: 0.2). The 9 taps of each output are gathered by slicing (im2col) and multiplied
   by the (9 * C_in, C_out) weight. Measured at batch 256: conv3-5 forward and backward 402 ->
   168 ms in bf16 at 3x3 maps (549 -> 335 at 4x4, 772 -> 762 at 6x6; in fp32 no gain), so it is
   taken for maps of at most 4x4, only with AMX and bf16 (without AMX, bf16 products barely pay
   for the gathering: on Zen 4, 157 -> 145 ms at 3x3 and 165 -> 275 at 4x4, so not taken there).

The wrapper shares the model's parameters (nothing is copied; checkpoints keep saving
`model.state_dict()`); it calls the model's `features` and `classifier` layers, so hooks on the
model itself do not run, nor hooks on the convolutions computed as products. Exports (export.py)
use the plain model: the fold depends on the batch size, and one exported graph serves every
batch size.

    >>> forward = fast_forward(AlexNet(10))            # train, evaluate and benchmark through this
    >>> forward(torch.randn(64, 3, 67, 67)).shape      # the same logits, fc6 36x cheaper
    torch.Size([64, 10])
"""

import sys
from pathlib import Path

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


CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The flags of this CPU that Linux reports (/proc/cpuinfo; e.g. avx512_bf16, amx_bf16), empty elsewhere."""
    if sys.platform != "linux":
        return set()
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


# The largest last side of a map that conv2d_by_matmul computes faster than oneDNN (see 3. above).
MATMUL_CONV_MAX_SIDE = 4


def conv2d_by_matmul(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Exactly `conv(x)` (to float rounding) for an ungrouped convolution, as one matrix product.

    im2col by slicing: each output position gathers its k * k input taps (each C_in wide), and
    (B * H_out * W_out, k * k * C_in) @ (k * k * C_in, C_out) gives every output at once. The
    gathering works on the channels-last view, so a channels_last input is read in memory order
    and the output is channels_last too.
    """
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    batch, c_in, height, width = x.shape
    h_out, w_out = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
    x = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, p, p, p))  # (B, C, H, W) -> (B, H + 2p, W + 2p, C)
    taps = [x[:, i : i + s * (h_out - 1) + 1 : s, j : j + s * (w_out - 1) + 1 : s] for i in range(k) for j in range(k)]
    columns = torch.stack(taps, dim=3).reshape(-1, k * k * c_in)  # -> (B * H_out * W_out, k * k * C)
    weight = conv.weight.permute(2, 3, 1, 0).reshape(k * k * c_in, -1)  # (C_out, C, k, k) -> (k * k * C, C_out)
    out = columns @ weight if conv.bias is None else torch.addmm(conv.bias, columns, weight)
    return out.view(batch, h_out, w_out, -1).permute(0, 3, 1, 2)  # -> (B, C_out, H_out, W_out), channels_last


def features(model: AlexNet, x: torch.Tensor, amx: bool) -> torch.Tensor:
    """`model.features(x)`, with the small convolutions computed by `conv2d_by_matmul` where that pays: on a
    CPU with AMX (`amx`), under bf16 autocast."""
    on_amx = amx and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    if not (on_amx and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return model.features(x)
    for layer in model.features:
        small = isinstance(layer, nn.Conv2d) and max(x.shape[-2:]) <= MATMUL_CONV_MAX_SIDE and layer.groups == 1
        x = conv2d_by_matmul(x, layer) if small and layer.padding_mode == "zeros" else layer(x)
    return x


class FastForward(nn.Module):
    """An AlexNet's forward pass with the speed-ups above; `self.model` is the plain network."""

    def __init__(self, model: AlexNet) -> None:
        super().__init__()
        self.model = model
        self.amx = "amx_bf16" in cpu_flags()  # Intel's matrix units (see 3. above)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        check_input_size(x, model.min_input_size)
        x = features(model, x, self.amx)  # (B, C, H, W) -> (B, 256, h, w)
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
