"""Grid geometry: cell placement, sizes, and distinct-class arrangements."""

import numpy as np
import pytest
from varrt.bench import grids


def test_cells_are_half_the_input_and_cover_it():
    assert grids.cell_size((224, 224)) == (112, 112)
    masks = grids.cell_masks((224, 224))
    assert masks.shape == (4, 224, 224)
    assert (masks.sum(axis=0) == 1).all()
    assert masks[0, 0, 0] and masks[1, 0, 223] and masks[2, 223, 0] and masks[3, 223, 223]
    assert masks[0, 111, 111] and masks[3, 112, 112]


def test_odd_input_leaves_a_border_in_no_cell():
    masks = grids.cell_masks((7, 9))
    assert grids.cell_size((7, 9)) == (3, 4)
    assert not masks[:, 6, :].any() and not masks[:, :, 8].any()


def test_assemble_grid_places_cells_row_by_row():
    cells = [np.full((2, 3, 3), value, dtype=np.uint8) for value in (10, 20, 30, 40)]
    grid = grids.assemble_grid(cells, (4, 6))
    assert grid.shape == (4, 6, 3)
    assert (grid[:2, :3] == 10).all() and (grid[:2, 3:] == 20).all()
    assert (grid[2:, :3] == 30).all() and (grid[2:, 3:] == 40).all()


def test_assemble_grid_rejects_wrong_cell_size():
    cells = [np.zeros((3, 3, 3), dtype=np.uint8)] * 4
    with pytest.raises(ValueError):
        grids.assemble_grid(cells, (4, 6))


def test_four_distinct_images_give_all_24_orderings():
    arrangements = grids.distinct_class_arrangements([5, 6, 7, 8])
    assert len(arrangements) == 24
    assert len(set(arrangements)) == 24
    for cell in range(4):
        assert sorted(a[cell] for a in arrangements) == sorted(list(range(4)) * 6)


def test_same_class_images_never_share_a_grid():
    classes = [1, 1, 2, 3, 4]
    arrangements = grids.distinct_class_arrangements(classes)
    assert arrangements and all(len({classes[i] for i in a}) == 4 for a in arrangements)
    assert grids.distinct_class_arrangements([1, 2, 3]) == []


def test_limit_and_sampling_are_seeded():
    first = grids.distinct_class_arrangements([0, 1, 2, 3, 4], limit=10, seed=3)
    assert len(first) == 10 and first == grids.distinct_class_arrangements([0, 1, 2, 3, 4], limit=10, seed=3)
    many = list(range(50)) * 2
    drawn = grids.distinct_class_arrangements(many, limit=20, seed=1)
    assert len(drawn) == 20 and all(len({many[i] for i in a}) == 4 for a in drawn)
    assert drawn == grids.distinct_class_arrangements(many, limit=20, seed=1)
    with pytest.raises(ValueError):
        grids.distinct_class_arrangements(many)
