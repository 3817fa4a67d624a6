"""The statistics of the report: a group's mean ± sample std (n) over its seeds, the spread of
a difference of seed means, and the bar a difference must clear to leave the noise. Imports
no torch."""
import pandas as pd

NOISE_STDS = 2.0  # a difference within this many stds of the seed noise is "inside the noise"


def mean_std_n(values: pd.Series) -> tuple[float, float | None, int]:
    """(mean, sample std (ddof 1; None for one value), n) of values, with no missing ones."""
    return values.mean(), values.std() if len(values) > 1 else None, len(values)


def sample_std(values) -> float:
    """Sample std (ddof 1) of values as floats; nan for fewer than two."""
    return pd.Series(values, dtype=float).std() if len(values) > 1 else float("nan")


def difference_std(noise: float, n_a: int, n_b: int) -> float:
    """Std of the difference of two means over n_a and n_b seeds, each seed with std noise."""
    return noise * (1 / n_a + 1 / n_b) ** 0.5
