"""The presets: the paper's LRN, two towers and init, and the torchvision layout and weights.

Where a test checks only the layers, their shapes or counts, the model (and its inputs) are built on the meta device,
as in test_alexnet.py: the same shapes, without the init's half second of random numbers.
"""

import copy
import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from alexnet import MIN_INPUT_SIZE, TORCHVISION_MIN_INPUT_SIZE, AlexNet, feature_map_size

PRESETS: dict[str, Callable[..., AlexNet]] = {
    "default": AlexNet,
    "paper": AlexNet.paper,
    "torchvision": AlexNet.torchvision,
}


@functools.cache
def paper_model() -> AlexNet:
    """AlexNet.paper(10), seeded and built once for the module, for the tests that only read it."""
    torch.manual_seed(0)
    return AlexNet.paper(10)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(model: AlexNet) -> list[nn.Conv2d]:
    return [m for m in model.features if isinstance(m, nn.Conv2d)]


def linears(model: AlexNet) -> list[nn.Linear]:
    return [m for m in model.classifier if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(
    "preset, classes, channels, expected",
    [
        ("default", 1000, 3, 62_378_344),
        ("paper", 1000, 3, 60_965_224),  # the paper's "60 million parameters"
        ("torchvision", 1000, 3, 61_100_840),  # torchvision's AlexNet_Weights meta["num_params"]
        ("default", 10, 1, 58_299_082),
        ("paper", 10, 1, 56_885_962),
        ("torchvision", 10, 1, 57_029_322),
        ("paper", 100, 3, 57_277_924),
        ("torchvision", 100, 3, 57_413_540),
    ],
)
def test_parameter_counts(preset: str, classes: int, channels: int, expected: int) -> None:
    with torch.device("meta"):
        assert count(PRESETS[preset](num_classes=classes, in_channels=channels)) == expected


def test_torchvision_metadata_agrees() -> None:
    meta = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta  # no download
    assert meta["num_params"] == 61_100_840
    assert meta["min_size"] == (TORCHVISION_MIN_INPUT_SIZE, TORCHVISION_MIN_INPUT_SIZE)


def test_lrn_follows_the_relus_of_conv1_and_conv2() -> None:
    with torch.device("meta"):
        kinds = [type(m) for m in AlexNet.paper(10).features]
        Conv, ReLU, LRN, Pool = nn.Conv2d, nn.ReLU, nn.LocalResponseNorm, nn.MaxPool2d
        assert kinds == [Conv, ReLU, LRN, Pool, Conv, ReLU, LRN, Pool, Conv, ReLU, Conv, ReLU, Conv, ReLU, Pool]
        for preset in ("default", "torchvision"):
            assert not any(isinstance(m, LRN) for m in PRESETS[preset](10).modules())


def test_lrn_matches_the_formula() -> None:
    """b_c = a_c / (k + alpha / n * sum of a_j^2 over the 5 channels j around c) ^ beta."""
    with torch.device("meta"):
        lrn = AlexNet.paper(10).features[2]  # a module without parameters: it runs on any tensor
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)
    a = torch.relu(torch.randn(2, 7, 3, 4, dtype=torch.float64)) * 300  # large enough to matter
    n, alpha, beta, k = 5, 1e-4, 0.75, 2.0
    expected = torch.empty_like(a)
    for c in range(a.shape[1]):
        neighbours = a[:, max(0, c - n // 2) : min(a.shape[1], c + n // 2 + 1)]
        expected[:, c] = a[:, c] / (k + alpha / n * neighbours.pow(2).sum(1)) ** beta
    torch.testing.assert_close(lrn(a), expected)
    assert not torch.allclose(lrn(a), a, rtol=0.05)  # the normalisation does something here


def test_groups_two_on_conv2_conv4_conv5_only() -> None:
    model = paper_model()
    assert [conv.groups for conv in convs(model)] == [1, 2, 1, 2, 2]
    with torch.device("meta"):
        assert [conv.groups for conv in convs(AlexNet(10))] == [1, 1, 1, 1, 1]
    assert [tuple(conv.weight.shape) for conv in convs(model)] == [
        (96, 3, 11, 11),
        (256, 48, 5, 5),  # each tower's 128 kernels see its own 48 channels of conv1
        (384, 256, 3, 3),  # conv3 sees both towers
        (384, 192, 3, 3),
        (256, 192, 3, 3),
    ]
    # Two towers: changing the second tower's input leaves the first tower's output alone.
    conv2 = convs(model)[1]
    x = torch.randn(1, 96, 9, 9)
    y = x.clone()
    y[:, 48:] = torch.randn(1, 48, 9, 9)
    with torch.no_grad():
        assert torch.equal(conv2(x)[:, :128], conv2(y)[:, :128])
        assert not torch.allclose(conv2(x)[:, 128:], conv2(y)[:, 128:])


@pytest.mark.parametrize("init, fc_std, one", [("paper", 0.01, 1.0), ("caffe", 0.005, 0.1)])
def test_paper_and_caffe_init(init: str, fc_std: float, one: float) -> None:
    model = paper_model() if init == "paper" else AlexNet.paper(10, init=init)
    conv1, conv2, conv3, conv4, conv5 = convs(model)
    fc6, fc7, fc8 = linears(model)
    for layer, std in [(conv1, 0.01), (conv2, 0.01), (conv3, 0.01), (conv4, 0.01), (conv5, 0.01),
                       (fc6, fc_std), (fc7, fc_std), (fc8, 0.01)]:  # fmt: skip
        assert abs(layer.weight.std().item() - std) < 0.05 * std
        assert abs(layer.weight.mean().item()) < 0.05 * std
    for layer in (conv2, conv4, conv5, fc6, fc7):
        assert torch.equal(layer.bias, torch.full_like(layer.bias, one))
    for layer in (conv1, conv3, fc8):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_he_init_is_the_default_and_can_replace_the_papers() -> None:
    with torch.device("meta"):
        assert AlexNet(10).config["init"] == "he"
        assert AlexNet.paper(10).config["init"] == "paper"
    model = AlexNet.paper(10, init="he")
    assert model.config["lrn"] and model.config["groups"] == 2
    conv4 = convs(model)[3]  # fan-in 192 * 3 * 3: He std sqrt(2 / 1728) = 0.034
    assert abs(conv4.weight.std().item() - (2 / (192 * 9)) ** 0.5) < 0.002
    assert all(torch.equal(layer.bias, torch.zeros_like(layer.bias)) for layer in convs(model) + linears(model))


def test_torchvision_layout_equals_torchvision() -> None:
    reference = torchvision.models.alexnet(weights=None, num_classes=10)  # random weights, no download
    model = AlexNet.torchvision(10)
    assert model.state_dict().keys() == reference.state_dict().keys()
    model.load_state_dict(reference.state_dict())  # strict
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)
        # The dropouts sit where torchvision's do: the same seed gives the same masks.
        model.train(), reference.train()
        torch.manual_seed(1)
        ours = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(ours, reference(x))


def test_from_torchvision_loads_the_weights() -> None:
    reference = torchvision.models.alexnet(weights=None).eval()
    model = AlexNet.from_torchvision(reference.state_dict()).eval()
    assert model.config["layout"] == "torchvision" and model.config["num_classes"] == 1000
    x = torch.randn(1, 3, 63, 70)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_from_torchvision_with_a_new_last_layer() -> None:
    reference = torchvision.models.alexnet(weights=None)
    model = AlexNet.from_torchvision(reference.state_dict(), num_classes=7)
    ours, theirs = model.state_dict(), reference.state_dict()
    for key in theirs:
        if key.startswith("classifier.6."):
            assert ours[key].shape[0] == 7
        else:
            assert torch.equal(ours[key], theirs[key]), key
    assert model.classifier[6].weight.std() < 0.01  # freshly initialised, small (He preset)


@pytest.mark.parametrize("preset", PRESETS)
def test_config_rebuilds_each_preset(preset: str) -> None:
    model = PRESETS[preset](num_classes=5, in_channels=1, dropout=0.3)
    with torch.device("meta"):  # as checkpoints.py rebuilds a model: its layers, then the weights as they are
        clone = AlexNet(**model.config)
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict(), assign=True)  # strict: the same modules and shapes
    x = torch.randn(1, 1, 67, 67)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), clone.eval()(x))


def test_default_layout_is_unchanged() -> None:
    """Old checkpoints (three-key configs, the same state_dict keys) still load."""
    with torch.device("meta"):
        model = AlexNet(num_classes=10, in_channels=1, dropout=0.5)
    assert model.config == {
        "num_classes": 10, "in_channels": 1, "dropout": 0.5,
        "layout": "paper", "lrn": False, "groups": 1, "init": "he",
    }  # fmt: skip
    weights = [k for k in model.state_dict() if k.endswith(".weight")]
    assert weights == [f"features.{i}.weight" for i in (0, 3, 6, 8, 10)] + [f"classifier.{i}.weight" for i in (0, 3, 6)]


@pytest.mark.parametrize(
    "preset, layout, smallest",
    [("default", "paper", MIN_INPUT_SIZE), ("paper", "paper", 67), ("torchvision", "torchvision", 63)],
)
def test_smallest_input_of_each_layout(preset: str, layout: str, smallest: int) -> None:
    assert feature_map_size(smallest, layout) == 1 and feature_map_size(smallest - 1, layout) == 0
    with torch.device("meta"):
        model = PRESETS[preset](num_classes=3).eval()
        assert model.min_input_size == smallest
        assert model(torch.randn(2, 3, smallest, smallest)).shape == (2, 3)
        assert model.features(torch.randn(1, 3, smallest, smallest)).shape[-2:] == (1, 1)
        for shape in [(smallest - 1, smallest), (smallest, smallest - 1)]:
            with pytest.raises(ValueError, match=f"at least {smallest}x{smallest}"):
                model(torch.randn(1, 3, *shape))


def test_feature_map_sizes_per_layout() -> None:
    assert feature_map_size(227) == feature_map_size(227, "paper") == 6
    assert feature_map_size(224, "torchvision") == 6  # torchvision's padding makes 224 work
    assert feature_map_size(224) == 5
    with pytest.raises(ValueError, match="layout"):
        feature_map_size(227, "vgg")


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="layout"):
        AlexNet(10, layout="caffenet")
    with pytest.raises(ValueError, match="init"):
        AlexNet(10, init="xavier")


def test_gradients_reach_every_parameter_of_the_paper_preset() -> None:
    model = copy.deepcopy(paper_model())  # a copy: backward() leaves gradients in it
    loss = F.cross_entropy(model(torch.randn(4, 3, 67, 67)), torch.arange(4))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
