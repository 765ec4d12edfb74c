"""How far apart two distributions of predictions are: the Jensen-Shannon distance.

The distributions come as counts by bin (class label, argmax index or histogram bucket); a bin that
only one side has counts 0 on the other. `analysis` says why this measure and not PSI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def js_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """The Jensen-Shannon distance of the distributions that the counts `p` and `q` make.

    sqrt(JSD) with JSD = (KL(P‖M) + KL(Q‖M)) / 2, M = (P + Q) / 2 and logarithms in base 2, so
    that it lies in [0, 1]: 0 for the same distribution, 1 for disjoint ones. Negative and NaN
    counts count as 0; ValueError when either side counts nothing.
    """
    left, right = _normalised(p), _normalised(q)
    divergence = 0.0
    for key in left.keys() | right.keys():
        a, b = left.get(key, 0.0), right.get(key, 0.0)
        middle = (a + b) / 2
        # A bin empty on one side adds nothing from that side: 0 * log(0) is 0.
        if a > 0:
            divergence += a * math.log2(a / middle) / 2
        if b > 0:
            divergence += b * math.log2(b / middle) / 2
    # Rounding can push the divergence a hair outside [0, 1], and sqrt of a tiny negative fails.
    return math.sqrt(min(1.0, max(0.0, divergence)))


def _normalised(counts: Mapping[str, float]) -> dict[str, float]:
    kept = {key: value for key, value in counts.items() if value > 0}  # NaN > 0 is False
    total = math.fsum(kept.values())
    if total <= 0:
        raise ValueError("a distribution needs a positive count in some bin")
    return {key: value / total for key, value in kept.items()}
