"""2x2 image grids for the grid pointing game: cell geometry, assembly and class arrangements.

Cells are numbered row by row: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right. Each
cell is half the model's input size (floored); with an odd input size the last row/column
belongs to no cell and stays black, so mass there counts against every class.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

CELLS = 4


def cell_size(input_hw: tuple[int, int]) -> tuple[int, int]:
    """Height and width of one cell for a model input of ``input_hw``."""
    height, width = input_hw
    return height // 2, width // 2


def cell_slices(input_hw: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Row and column slices of the four cells, in cell order."""
    ch, cw = cell_size(input_hw)
    return [(slice(r * ch, (r + 1) * ch), slice(c * cw, (c + 1) * cw)) for r in range(2) for c in range(2)]


def cell_masks(input_hw: tuple[int, int]) -> np.ndarray:
    """Boolean [4, H, W]: True inside each cell."""
    masks = np.zeros((CELLS, *input_hw), dtype=bool)
    for index, (rows, cols) in enumerate(cell_slices(input_hw)):
        masks[index, rows, cols] = True
    return masks


def assemble_grid(cells: Sequence[np.ndarray], input_hw: tuple[int, int]) -> np.ndarray:
    """Place four [h, w, C] cell images (already cell-sized) into one [H, W, C] grid."""
    if len(cells) != CELLS:
        raise ValueError(f"a grid needs {CELLS} cells, got {len(cells)}")
    expected = cell_size(input_hw)
    channels = np.asarray(cells[0]).shape[-1]
    grid = np.zeros((*input_hw, channels), dtype=np.asarray(cells[0]).dtype)
    for cell, (rows, cols) in zip(cells, cell_slices(input_hw), strict=True):
        cell = np.asarray(cell)
        if cell.shape[:2] != expected:
            raise ValueError(f"cell of shape {cell.shape[:2]} does not fit a {expected} slot")
        grid[rows, cols] = cell
    return grid


def distinct_class_arrangements(
    classes: Sequence[int], limit: int | None = None, seed: int = 0, enumerate_up_to: int = 12
) -> list[tuple[int, int, int, int]]:
    """Ordered 4-tuples of image indices whose classes are pairwise distinct.

    With few images (at most ``enumerate_up_to``) every arrangement is listed, so four bundled
    photos give all 24 orderings and each photo sits in each cell equally often; ``limit`` then
    keeps a seeded random subset. With many images (an ImageNet validation folder) tuples are
    drawn at random, which needs ``limit``.
    """
    classes = list(classes)
    if len(set(classes)) < CELLS:
        return []
    rng = np.random.default_rng(seed)
    if len(classes) <= enumerate_up_to:
        every = [
            (a, b, c, d)
            for a, b, c, d in itertools.permutations(range(len(classes)), CELLS)
            if len({classes[a], classes[b], classes[c], classes[d]}) == CELLS
        ]
        if limit is not None and limit < len(every):
            keep = np.sort(rng.choice(len(every), size=limit, replace=False))
            every = [every[i] for i in keep]
        return every
    if limit is None:
        raise ValueError("drawing grids from many images needs a limit")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(classes):
        by_class.setdefault(label, []).append(index)
    labels = sorted(by_class)
    drawn: list[tuple[int, int, int, int]] = []
    for _ in range(limit):
        chosen = rng.choice(len(labels), size=CELLS, replace=False)
        a, b, c, d = (int(m[rng.integers(len(m))]) for m in (by_class[labels[i]] for i in chosen))
        drawn.append((a, b, c, d))
    return drawn
