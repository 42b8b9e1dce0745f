"""The seeded sampler: the indices every record's calibration ids and evaluation subset came from.

The expected lists were drawn by the three samplers it replaced (ImageNet calibration, ImageNet
evaluation subset, COCO subsets) before they were merged: a change here changes stored results."""

from pathlib import Path

import pytest

from ptqbench.data.coco import seeded_indices
from ptqbench.data.imagenet import calibration_indices, eval_subset
from ptqbench.data.sampling import seeded_subset
from ptqbench.errors import DataNotFoundError


class _Sized:
    """Stands for a dataset of `n` samples: the samplers only read its length."""

    root, split = Path("/data"), "train"

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("n,k,seed,expected", [
    (10, 3, 0, [4, 1, 7]),
    (1000, 8, 1, [845, 303, 66, 436, 239, 593, 573, 999]),
])
def test_calibration_draw_is_the_one_stored_records_used(n, k, seed, expected):
    assert calibration_indices(_Sized(n), k, seed) == expected
    assert seeded_subset(n, k, seed, sort=False) == expected


def test_evaluation_and_coco_subsets_are_the_sorted_draw():
    assert list(eval_subset(_Sized(100), 5).indices) == [19, 44, 71, 90, 93]
    assert seeded_indices(10, 3, 5) == [1, 4, 9]
    for n, k, seed in [(1300, 50, 0), (50000, 1000, 0), (5000, 64, 3), (7, 6, 2**31 - 1)]:
        drawn = seeded_subset(n, k, seed, sort=False)
        assert len(set(drawn)) == k and all(0 <= i < n for i in drawn)
        assert seeded_subset(n, k, seed) == sorted(drawn)
        assert seeded_indices(n, k, seed) == sorted(drawn)
        assert calibration_indices(_Sized(n), k, seed) == drawn
    assert list(eval_subset(_Sized(5000), 64).indices) == seeded_subset(5000, 64, 0)


def test_whole_sets_and_bad_sizes():
    assert seeded_indices(5, 5, 0) is None and seeded_indices(5, None, 0) is None
    ds = _Sized(5)
    assert eval_subset(ds, 5) is ds and eval_subset(ds, None) is ds
    with pytest.raises(DataNotFoundError, match=r"calib.size=6 .* use calib.size=1..5"):
        calibration_indices(ds, 6, 0)
    with pytest.raises(ValueError, match="cannot draw 6 of 5 indices"):
        seeded_subset(5, 6, 0)
