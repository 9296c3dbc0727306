"""The search for a side's capacity: the largest N that passes, by growth then bisection.

Grow N by `grow` from `start` until the first failure (or shrink until the first pass when
`start` already fails), then bisect between the last pass and the first failure until they
are `resolution` apart. Every N tried is a fresh server and a full run (capacity.run_one), so
the search only decides which N to try next; the pass/fail rule stays capacity.py's. By
construction every passing N is below every failing one, so "the largest N that passed" is the
capacity the search found. The machine is noisy: a search is one sample of a noisy boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def capacity_search(
    passes: Callable[[int], bool],
    start: int,
    *,
    grow: float = 2.0,
    resolution: int = 1,
    max_n: int = 200,
) -> tuple[int, list[tuple[int, bool]]]:
    """The largest passing N (0 when N=1 fails) and every (N, passed) tried, in order."""
    tried: list[tuple[int, bool]] = []

    def run(n: int) -> bool:
        ok = passes(n)
        tried.append((n, ok))
        return ok

    def step(n: int) -> int:
        return max(n + 1, math.ceil(n * grow))

    n = max(1, min(start, max_n))
    if run(n):
        good, bad = n, None
        while bad is None and good < max_n:
            n = min(step(good), max_n)
            if run(n):
                good = n
            else:
                bad = n
        if bad is None:
            return good, tried  # passed up to max_n: the capacity is at least this
    else:
        bad, good = n, 0
        while good == 0 and bad > 1:
            n = min(bad - 1, max(1, math.floor(bad / grow)))
            if run(n):
                good = n
            else:
                bad = n
        if good == 0:
            return 0, tried
    while bad - good > resolution:
        n = (good + bad) // 2
        if run(n):
            good = n
        else:
            bad = n
    return good, tried
