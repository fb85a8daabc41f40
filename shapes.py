"""The built-in dataset: ten kinds of rendered shapes, generated in code, offline and fast.

    >>> from shapes import make_shapes, CLASSES
    >>> images, labels = make_shapes(1000, image_size=67, seed=0)
    >>> images.shape, images.dtype, labels.shape          # uint8 RGB images, int64 labels
    (torch.Size([1000, 3, 67, 67]), torch.uint8, torch.Size([1000]))

Each image is one shape (circle, ring, triangle, ...) with a random colour, size, rotation and
position, drawn over a random background colour gradient and a few random line segments
(clutter), plus pixel noise. Foreground and background colours are random, so colour says nothing
about the class and a linear model on raw pixels does poorly: telling the classes apart needs the
spatial features a convnet learns. The same seed always gives the same images.
"""

import math

import torch

CLASSES = ["circle", "ring", "triangle", "square", "cross", "flower", "crescent", "heart", "arrow", "bowtie"]


def _inside(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Mask of the points (u, v) inside shape `kind`, in the shape's own frame (radius about 1)."""
    r2 = u * u + v * v
    if kind == 0:  # circle
        return r2 <= 1
    if kind == 1:  # ring
        return (r2 <= 1) & (r2 >= 0.55**2)
    if kind == 2:  # equilateral triangle, circumradius 1
        inside = torch.ones_like(u, dtype=torch.bool)
        for angle in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):
            inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.5
        return inside
    if kind == 3:  # square
        return (u.abs() <= 0.75) & (v.abs() <= 0.75)
    if kind == 4:  # cross
        return ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1))
    if kind == 5:  # five-petal flower
        return r2.sqrt() <= 0.55 + 0.45 * torch.cos(5 * torch.atan2(v, u))
    if kind == 6:  # crescent: a disc minus a shifted disc
        return (r2 <= 1) & ((u - 0.5) ** 2 + v * v >= 0.8**2)
    if kind == 7:  # heart: (x^2 + y^2 - 1)^3 <= x^2 y^3
        x, y = 1.2 * u, -1.2 * v + 0.15
        return (x * x + y * y - 1) ** 3 <= x * x * y**3
    if kind == 8:  # arrow: shaft and head
        shaft = (u >= -1) & (u <= 0.1) & (v.abs() <= 0.22)
        head = (u >= 0.1) & (u <= 1) & (v.abs() <= 0.75 * (1 - u) / 0.9)
        return shaft | head
    if kind == 9:  # bowtie: two triangles meeting at their tips
        return (v.abs() <= 0.9 * u.abs()) & (u.abs() <= 0.9)
    raise ValueError(f"unknown shape kind {kind}")


def _render(labels: torch.Tensor, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Render one chunk of images as float RGB in [0, 1]: (N,) labels -> (N, 3, S, S)."""
    n, size = len(labels), image_size
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    # Pixel centres in [0, 1]; supersampled 2x per axis, averaged at the end (anti-aliasing).
    fine = (torch.arange(2 * size) + 0.5) / (2 * size)
    y, x = fine.view(1, -1, 1), fine.view(1, 1, -1)  # (1, 2S, 1), (1, 1, 2S)

    # Background: a random linear colour gradient.
    colour_a, colour_b = rand(n, 3, 1, 1), rand(n, 3, 1, 1)
    angle = rand(n, 1, 1) * 2 * math.pi
    t = ((x - 0.5) * torch.cos(angle) + (y - 0.5) * torch.sin(angle) + 0.71) / 1.42  # (N, 2S, 2S)
    image = colour_a + (colour_b - colour_a) * t.unsqueeze(1)  # (N, 3, 2S, 2S)

    # Clutter: three line segments of random colour and width.
    for _ in range(3):
        p, q = rand(n, 2, 1, 1), rand(n, 2, 1, 1)
        d = q - p
        s = (((x - p[:, 0]) * d[:, 0] + (y - p[:, 1]) * d[:, 1]) / (d * d).sum(1).clamp_min(1e-6)).clamp(0, 1)
        dist2 = (x - p[:, 0] - s * d[:, 0]) ** 2 + (y - p[:, 1] - s * d[:, 1]) ** 2
        width = 0.004 + 0.008 * rand(n, 1, 1)
        mask = (dist2 <= width**2).unsqueeze(1)
        image = torch.where(mask, rand(n, 3, 1, 1), image)

    # The shape: random radius, centre, rotation; a colour far from the background's mean in
    # every channel, so it never vanishes into the background.
    radius = 0.25 + 0.17 * rand(n, 1, 1)
    cx = radius + (1 - 2 * radius) * rand(n, 1, 1)
    cy = radius + (1 - 2 * radius) * rand(n, 1, 1)
    theta = rand(n, 1, 1) * 2 * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    u = ((x - cx) * cos + (y - cy) * sin) / radius  # (N, 2S, 2S) in the shape's frame
    v = (-(x - cx) * sin + (y - cy) * cos) / radius
    inside = torch.zeros(n, 2 * size, 2 * size, dtype=torch.bool)
    for kind in labels.unique().tolist():
        idx = (labels == kind).nonzero().squeeze(1)
        inside[idx] = _inside(kind, u[idx], v[idx])
    background_mean = (colour_a + colour_b) / 2
    foreground = (background_mean + 0.35 + 0.3 * rand(n, 3, 1, 1)) % 1.0
    image = torch.where(inside.unsqueeze(1), foreground, image)

    image = torch.nn.functional.avg_pool2d(image, 2)  # (N, 3, 2S, 2S) -> (N, 3, S, S)
    image = image + 0.05 * torch.randn(image.shape, generator=generator)  # sensor-like noise
    return image.clamp(0, 1)


def make_shapes(num_images: int, image_size: int = 67, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate `num_images` labelled shape images, the same ones for the same arguments.

    Returns (images, labels): (N, 3, S, S) uint8 and (N,) int64, classes balanced and shuffled.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % len(CLASSES)
    labels = labels[torch.randperm(num_images, generator=generator)]
    images = torch.empty(num_images, 3, image_size, image_size, dtype=torch.uint8)
    chunk = max(1, 2_000_000 // (image_size * image_size))  # bounds the float32 working memory
    for start in range(0, num_images, chunk):
        rendered = _render(labels[start : start + chunk], image_size, generator)
        images[start : start + chunk] = (rendered * 255).round().to(torch.uint8)
    return images, labels
