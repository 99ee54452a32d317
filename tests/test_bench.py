"""course.bench: the timer the notebooks' Measure sections use."""

import pytest

from course.bench import median_time


def test_median_time_measures_a_call():
    assert median_time(sum, range(10_000), repeats=3) > 0


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}])
def test_median_time_rejects_nonsense(kwargs):
    with pytest.raises(ValueError, match="need repeats >= 1 and warmup >= 0"):
        median_time(sum, range(10), **kwargs)
