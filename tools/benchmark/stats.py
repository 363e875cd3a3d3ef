"""Statistics of the measured rows: the cost-growth exponents and the ClusterFormer / peer
ratios. (Not ``statistics.py``: run from this folder, that name would hide the standard
library's module.)"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence


def fitted_exponent(pixels: Sequence[float], costs: Sequence[float]) -> Optional[float]:
    """Slope of the least-squares line through (log pixels, log cost)."""
    points = [(math.log(p), math.log(c)) for p, c in zip(pixels, costs) if c and c > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def scaling_exponents(rows: List[dict]) -> Dict[str, Dict[str, Optional[float]]]:
    out = {}
    for name in dict.fromkeys(r["model"] for r in rows if r["suite"] == "scaling"):
        mine = [r for r in rows if r["suite"] == "scaling" and r["model"] == name]
        pixels = [r["height"] * r["width"] for r in mine]
        out[name] = {
            "latency": fitted_exponent(pixels, [r["latency_ms"] for r in mine]),
            "peak_memory": fitted_exponent(pixels, [r["peak_memory_mib"] for r in mine]),
            "gmacs": fitted_exponent(pixels, [r["gmacs"] for r in mine]),
        }
    return out


def ratios(rows: List[dict]) -> List[dict]:
    """ClusterFormer / peer for latency, memory and GMACs, within each measured group."""
    out = []
    keyf = lambda r: (r["suite"], r["height"], r["width"], r["batch"], r["mode"])  # noqa: E731
    for r in rows:
        if r["family"] != "clusterformer":
            continue
        for p in rows:
            if p["family"] != "peer" or keyf(p) != keyf(r) or p["size_class"] != r["size_class"]:
                continue
            entry = {
                "suite": r["suite"],
                "clusterformer": r["model"],
                "peer": p["model"],
                "height": r["height"],
                "width": r["width"],
                "batch": r["batch"],
                "mode": r["mode"],
            }
            for k in ("latency_ms", "peak_memory_mib", "gmacs", "params_m"):
                a, b = r.get(k), p.get(k)
                entry[k] = a / b if a and b else None
            out.append(entry)
    return out
