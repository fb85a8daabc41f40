"""The model: shapes, parameter counts, gradients, loss at init, overfitting, the MPS pooling path, the fc6 fold.

Where a test checks only shapes or counts, the model and its inputs are built on the meta device (tensors with a
shape and no data: PyTorch computes every shape as on the CPU), which saves the half second of init that 58 M
random numbers cost a CPU core.
"""

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import speedups
from alexnet import MIN_INPUT_SIZE, AlexNet, feature_map_size
from speedups import adaptive_avg_pool_by_matmul, conv2d_by_matmul, fast_forward


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def model_of(layout: str) -> AlexNet:
    """A seeded 10-class model of each layout, built once for the module, for the tests that only run it (each
    sets the mode it needs, none changes its weights)."""
    torch.manual_seed(0)
    return AlexNet(10, layout=layout)


def test_parameter_counts_match_the_paper_layout() -> None:
    with torch.device("meta"):
        assert count(AlexNet()) == 62_378_344
        assert count(AlexNet(num_classes=10, in_channels=1)) == 58_299_082


@pytest.mark.parametrize("size, channels, classes", [(67, 3, 10), (96, 1, 7), (131, 3, 2), (224, 3, 1000), (227, 1, 5)])
def test_output_shape_for_many_input_sizes(size: int, channels: int, classes: int) -> None:
    with torch.device("meta"):
        model = AlexNet(num_classes=classes, in_channels=channels).eval()
        assert model(torch.randn(2, channels, size, size)).shape == (2, classes)


def test_feature_map_sizes_tell_the_224_227_story() -> None:
    assert feature_map_size(227) == 6  # the paper's 55 -> 27 -> 13 -> 6
    assert feature_map_size(224) == 5  # 224 does not fit the arithmetic
    assert feature_map_size(MIN_INPUT_SIZE) == 1
    with torch.device("meta"):
        model = AlexNet(10).eval()
        assert model.features(torch.randn(1, 3, 227, 227)).shape == (1, 256, 6, 6)
        assert model.features(torch.randn(1, 3, 224, 224)).shape == (1, 256, 5, 5)


def test_too_small_input_gives_a_clear_error() -> None:
    with torch.device("meta"), pytest.raises(ValueError, match="at least 67x67"):
        AlexNet(10)(torch.randn(1, 3, 66, 66))


def test_non_square_input() -> None:
    with torch.device("meta"):
        assert AlexNet(4).eval()(torch.randn(1, 3, 80, 150)).shape == (1, 4)


def test_gradients_reach_every_parameter() -> None:
    model = copy.deepcopy(model_of("paper"))  # a copy: backward() leaves gradients in it
    loss = F.cross_entropy(model(torch.randn(4, 3, 67, 67)), torch.arange(4))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("classes", [10, 100])
def test_loss_at_init_is_chance(classes: int) -> None:
    model = AlexNet(num_classes=classes).eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(torch.randn(32, 3, 67, 67)), torch.randint(0, classes, (32,)))
    assert abs(loss.item() - math.log(classes)) < 0.1


def test_activations_keep_their_scale_at_init() -> None:
    """The init must neither blow up nor vanish the signal (the reason plain SGD stalls)."""
    model = model_of("paper").eval()
    with torch.no_grad():
        features = model.features(torch.randn(16, 3, 96, 96))
        hidden = model.classifier[:-1](torch.flatten(F.adaptive_avg_pool2d(features, 6), 1))
    # PyTorch's default init gives ~0.03 and ~0.01 here (the stall).
    for h in (features, hidden):
        assert 0.3 < h.pow(2).mean().sqrt() < 10


@pytest.mark.slow
def test_overfits_one_tiny_batch() -> None:
    model = AlexNet(num_classes=4, dropout=0.0)
    images, labels = torch.randn(4, 3, 67, 67), torch.arange(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    for _ in range(16):  # (loss 0.15, 0.08 and 0.07 by then with seeds 0, 1 and 2; chance is ln 4 = 1.39)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3
    assert (model(images).argmax(1) == labels).all()


def test_dropout_only_in_training() -> None:
    model = model_of("paper")
    x = torch.randn(2, 3, 67, 67)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("size", [1, 2, 5, 6, 7, 13])
def test_matmul_pooling_equals_adaptive_pooling(size: int) -> None:
    x = torch.randn(2, 3, size, size + 1)
    assert torch.allclose(adaptive_avg_pool_by_matmul(x, 6), F.adaptive_avg_pool2d(x, 6), atol=1e-6)


def pooled_then_fc6(model: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """The textbook forward pass: pool the last map to 6x6, flatten, then the whole classifier."""
    return model.classifier(torch.flatten(F.adaptive_avg_pool2d(model.features(x), 6), 1))


@pytest.mark.parametrize("layout", ["paper", "torchvision"])
def test_the_plain_forward_is_the_textbook_one(layout: str) -> None:
    model = model_of(layout).eval()
    x = torch.randn(2, 3, 99, 99)
    assert torch.equal(model(x), pooled_then_fc6(model, x))


# The smallest batch at which fast_forward folds fc6, for last maps of 1x1, 2x2 and 3x3: the fold pays when
# batch * (36 - h * w) > 36 * h * w.
FOLD_BATCH = {67: 2, 99: 5, 131: 13}


@pytest.mark.parametrize("layout", ["paper", "torchvision"])
@pytest.mark.parametrize("size", FOLD_BATCH)
@pytest.mark.parametrize("training", [True, False])
def test_fc6_folded_through_the_pooling_is_the_same_function(layout: str, size: int, training: bool) -> None:
    model = model_of(layout).train(training)
    torch.manual_seed(0)
    x = torch.randn(FOLD_BATCH[size], 3, size, size)
    outputs, grads = [], []
    for forward in (fast_forward(model), model):
        torch.manual_seed(1)  # the same dropout masks in both passes
        out = forward(x)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), list(model.parameters())))
    # Equal up to float32 rounding (a wrong fold is off by the size of the values themselves).
    for (name, _), ours, reference in zip(
        [("output", None), *model.named_parameters()], [outputs[0], *grads[0]], [outputs[1], *grads[1]]
    ):
        assert (ours - reference).abs().max() <= 1e-5 * reference.abs().max(), name


@pytest.mark.parametrize("batch, size", [(1, 67), (2, 224), (3, 227)])  # no fold: one image, a 5x5 map, a 6x6 map
def test_fast_forward_without_the_fold_equals_the_plain_forward(batch: int, size: int) -> None:
    model = model_of("paper").eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(fast_forward(model)(x), model(x), rtol=0, atol=0)


def test_fast_forward_shares_the_models_parameters_and_refuses_small_inputs() -> None:
    model = model_of("paper")
    forward = fast_forward(model)
    assert fast_forward(forward) is forward  # wrapping twice changes nothing
    assert [p.data_ptr() for p in forward.parameters()] == [p.data_ptr() for p in model.parameters()]
    assert list(model.state_dict()) == [k.removeprefix("model.") for k in forward.state_dict()]
    with pytest.raises(ValueError, match="at least 67x67"):
        forward(torch.randn(1, 3, 66, 66))


@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride, padding, side, bias",
    [(256, 384, 3, 1, 1, 3, True), (8, 5, 3, 1, 1, 4, False), (3, 6, 11, 4, 0, 67, True), (4, 7, 5, 1, 2, 7, True)],
)
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_a_convolution_as_one_matrix_product_is_the_same_function(
    c_in: int, c_out: int, kernel: int, stride: int, padding: int, side: int, bias: bool, memory_format
) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias)
    x = torch.randn(3, c_in, side, side).contiguous(memory_format=memory_format).requires_grad_()
    outputs, grads = [], []
    for compute in (conv2d_by_matmul, lambda x, conv: conv(x)):
        out = compute(x, conv)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [x, *conv.parameters()]))
    assert outputs[0].is_contiguous(memory_format=torch.channels_last)
    for ours, reference in zip([outputs[0], *grads[0]], [outputs[1], *grads[1]]):
        assert ours.shape == reference.shape
        assert (ours - reference).abs().max() <= 1e-5 * reference.abs().max()


@pytest.mark.parametrize("amx", [True, False])
def test_on_amx_the_small_convolutions_run_as_products_under_bf16_only(amx: bool) -> None:
    """At 67 px conv3-5 see 3x3 maps: with AMX and bf16 autocast they run as products (the same function to bf16
    rounding); without AMX, or in fp32, as the model's convolutions."""
    torch.manual_seed(0)
    model = AlexNet(10, dropout=0.0)
    calls = []
    for i, layer in enumerate(model.features):
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(lambda module, args, out, i=i: calls.append(i))
    forward = fast_forward(model)
    forward.amx = amx
    x = torch.randn(4, 3, 67, 67).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = forward(x).float()
    plain_convs = [0, 3, 6, 8, 10]  # conv1 to conv5
    assert calls == (plain_convs[:2] if amx else plain_convs)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(x).float()
    assert (ours - reference).abs().max() <= 0.05 * reference.abs().max()  # bf16 rounds to 3 significant digits
    calls.clear()
    forward(x)  # fp32: no products
    assert calls == plain_convs


def test_cpu_flags_are_those_linux_reports(tmp_path, monkeypatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.setattr(speedups, "CPUINFO", cpuinfo)
    monkeypatch.setattr(speedups.sys, "platform", "linux")
    assert speedups.cpu_flags() == {"fpu", "avx512_bf16", "amx_bf16"}
    monkeypatch.setattr(speedups, "CPUINFO", tmp_path / "absent")
    assert speedups.cpu_flags() == set()


def test_fc6_on_a_1x1_map_costs_a_36th() -> None:
    # At 67 px the last map is 1x1 and the pooling copies it 36 times: fc6 then runs as a
    # 256-wide layer. FLOPs of the forward pass, counted by PyTorch.
    model = model_of("paper").eval()
    x = torch.randn(64, 3, 67, 67)
    flops = []
    for forward in (fast_forward(model), model):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            forward(x)
        flops.append(counter.get_total_flops())
    fc6_full = 2 * 64 * 9216 * 4096
    assert flops[1] - flops[0] == fc6_full - fc6_full // 36


def test_config_rebuilds_the_same_architecture() -> None:
    model = AlexNet(num_classes=7, in_channels=1, dropout=0.3)
    with torch.device("meta"):  # as checkpoints.py rebuilds a model: its layers, then the weights as they are
        clone = AlexNet(**model.config)
    clone.load_state_dict(model.state_dict(), assign=True)  # strict: the same modules and shapes
    x = torch.randn(1, 1, 67, 67)
    assert torch.equal(model.eval()(x), clone.eval()(x))
