"""The paper's Figure 4 (right): the training images whose last hidden layer is nearest to a query's.

Section 6.1: "If two images produce feature activation vectors with a small Euclidean separation,
we can say that the higher levels of the neural network consider them to be similar." The 4096
activations of fc7 (after its ReLU) of a few validation images are compared with those of the
training images; the nearest training images show what the network groups together, often
images that are far apart pixel by pixel.

    >>> from neighbours import fc7_features, nearest_training_images
    >>> fc7_features(model, eval_transform(images, preset)).shape             # (B, 4096)
    >>> indices, distances = nearest_training_images(model, queries, data.train, preset, k=6)

The training set is searched a batch at a time, keeping only each query's k nearest so far:
the memory needed is queries x k numbers and one batch, whatever the size of the training set.
train.py draws the result (plots.plot_neighbours) as neighbours.png at the end of a run.
"""

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch

from alexnet import AlexNet
from presets import EvalPreset, eval_transform
from speedups import pool_to_6x6

if TYPE_CHECKING:  # for the type hints only: a notebook importing this module needs no data code
    from data_pipeline import BatchSource


@torch.no_grad()
def fc7_features(model: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """The last hidden layer's activations (fc7, after its ReLU) of normalised inputs, in eval mode
    (no dropout): (B, C, S, S) -> (B, 4096) float32. The model is left in the mode it came in."""
    was_training = model.training
    model.eval()
    x = torch.flatten(pool_to_6x6(model.features(x)), 1)  # (B, C, S, S) -> (B, 256, 6, 6) -> (B, 9216)
    features = model.classifier[:-1](x)  # fc6 and fc7 with their ReLUs: all but fc8 -> (B, 4096)
    model.train(was_training)
    return features.float()


def nearest_neighbours(
    queries: torch.Tensor, batches: Iterable[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's k nearest rows, by Euclidean distance, among all the rows of `batches` (searched
    one batch at a time): (indices (Q, k), distances (Q, k)), nearest first; an index counts the
    rows of all the batches in order. Fewer than k rows in all: that many columns."""
    best_distances = queries.new_empty(len(queries), 0)
    best_indices = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
    seen = 0
    for batch in batches:
        # Exact differences, not the |a|^2 - 2ab + |b|^2 shortcut, whose rounding can reorder near neighbours.
        distances = torch.cdist(queries, batch.to(queries), compute_mode="donot_use_mm_for_euclid_dist")  # (Q, B)
        indices = torch.arange(seen, seen + len(batch), device=queries.device).expand(len(queries), -1)
        distances, indices = torch.cat([best_distances, distances], 1), torch.cat([best_indices, indices], 1)
        best_distances, columns = distances.topk(min(k, distances.shape[1]), dim=1, largest=False)  # sorted
        best_indices = indices.gather(1, columns)
        seen += len(batch)
    return best_indices, best_distances


def nearest_training_images(
    model: AlexNet,
    query_images: torch.Tensor,
    train: "BatchSource",
    preset: EvalPreset,
    k: int = 6,
    max_images: int | None = None,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For uint8 query images (Q, C, H, W): the indices into `train` (a random-access source) of each
    one's k training images nearest in fc7, and their distances, (Q, k) each, nearest first. Every
    image is preprocessed as validation does (`preset`). `max_images`: search a seeded random sample
    of that many training images instead of all of them."""
    device = next(model.parameters()).device
    queries = fc7_features(model, eval_transform(query_images.to(device), preset))
    searched = torch.arange(len(train))
    if max_images is not None and max_images < len(train):
        searched = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:max_images].sort().values

    def features() -> Iterator[torch.Tensor]:
        for chunk in searched.split(batch_size):
            images, _ = train.take(chunk.tolist())
            yield fc7_features(model, eval_transform(images, preset))

    positions, distances = nearest_neighbours(queries, features(), k)
    return searched[positions.cpu()], distances.cpu()
