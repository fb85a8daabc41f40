"""The paper's Figure 4: fc7 features, their nearest neighbours searched in chunks, and the picture."""

from pathlib import Path

import pytest
import torch
from helpers import png_size

import plots
from alexnet import AlexNet
from data_pipeline import InMemory
from neighbours import fc7_features, nearest_neighbours, nearest_training_images
from presets import EvalPreset, eval_transform

PRESET = EvalPreset(image_size=67, resize_size=67, mean=[0.5] * 3, std=[0.25] * 3, in_channels=3)


def brute_force(queries: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every distance, written out, then sorted: (indices, distances) of the k nearest."""
    distances = ((queries[:, None, :] - rows[None, :, :]) ** 2).sum(-1).sqrt()  # (Q, N)
    order = distances.argsort(dim=1)[:, :k]
    return order, distances.gather(1, order)


@pytest.mark.parametrize("chunk", [1, 4, 23, 100])
def test_the_chunked_search_finds_what_a_brute_force_search_finds(chunk: int) -> None:
    torch.manual_seed(0)
    queries, rows = torch.randn(3, 5), torch.randn(23, 5)
    for k in (1, 6, 23):
        indices, distances = nearest_neighbours(queries, rows.split(chunk), k)
        expected_indices, expected_distances = brute_force(queries, rows, k)
        assert torch.equal(indices, expected_indices), (chunk, k)
        torch.testing.assert_close(distances, expected_distances)
    indices, _ = nearest_neighbours(queries, rows.split(chunk), 50)  # fewer rows than k: all of them, in order
    assert indices.shape == (3, 23) and torch.equal(indices, brute_force(queries, rows, 23)[0])


def test_fc7_features_are_the_last_hidden_layer_after_its_relu() -> None:
    torch.manual_seed(0)
    model = AlexNet(5).train()
    x = torch.randn(2, 3, 67, 67)
    seen = []
    relu7 = model.classifier[4]  # the paper layout: fc6, ReLU, Dropout, fc7, ReLU (this one), Dropout, fc8
    handle = relu7.register_forward_hook(lambda module, inputs, output: seen.append(output.clone()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    model.train()
    features = fc7_features(model, x)
    assert features.shape == (2, 4096) and features.dtype == torch.float32 and model.training
    torch.testing.assert_close(features, seen[0], rtol=0, atol=0)
    assert (features >= 0).all() and (features > 0).any()


def test_nearest_training_images_against_a_brute_force_search() -> None:
    torch.manual_seed(0)
    model = AlexNet(4).eval()
    images = torch.randint(0, 256, (12, 3, 67, 67), dtype=torch.uint8)
    train = InMemory(images, torch.arange(12) % 4, batch_size=5, train=True, device=torch.device("cpu"))
    queries = torch.cat([images[7:8], torch.randint(0, 256, (1, 3, 67, 67), dtype=torch.uint8)])
    all_features = fc7_features(model, eval_transform(images, PRESET))
    query_features = fc7_features(model, eval_transform(queries, PRESET))
    indices, distances = nearest_training_images(model, queries, train, PRESET, k=3, batch_size=5)
    assert torch.equal(indices, brute_force(query_features, all_features, 3)[0])
    # A training image is its own nearest neighbour (at 0, up to the rounding of another batch size).
    assert indices[0, 0] == 7 and distances[0, 0] < 1e-4 * distances[0, 1]
    # A sample of the training set: the nearest within the sample, as indices of the whole set.
    indices, _ = nearest_training_images(model, queries, train, PRESET, k=2, max_images=5, batch_size=2)
    searched = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5].sort().values
    expected = searched[brute_force(query_features, all_features[searched], 2)[0]]
    assert torch.equal(indices, expected) and set(indices.flatten().tolist()) <= set(searched.tolist())


def test_plot_neighbours_draws_a_row_per_query(tmp_path: Path) -> None:
    queries = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    neighbours = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    path = tmp_path / "neighbours.png"
    plots.plot_neighbours(queries, [0, 1], neighbours, [[0, 1, 0, 0], [1, 1, 0, 1]], ["a", "b"], path)
    assert png_size(path) == (5 * 160, 2 * 190)
    gray = tmp_path / "gray.png"
    plots.plot_neighbours(queries[:1, :1], [0], neighbours[:1, :2, :1], [[0, 1]], ["a", "b"], gray)
    assert png_size(gray) == (3 * 160, 190)
    with pytest.raises(ValueError, match=r"neighbours \(Q, K, C, H, W\)"):
        plots.plot_neighbours(queries, [0, 1], neighbours[0], [0, 1, 0, 0], ["a", "b"], tmp_path / "bad.png")
