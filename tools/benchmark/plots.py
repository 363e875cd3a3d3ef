"""PNG plots of a run: latency bars per suite and log-log cost growth."""

from __future__ import annotations

from typing import List

from tools.benchmark.report import fmt


def plot(result: dict, stem: str) -> List[str]:
    """Bar charts of the backbones and panoptic suites, log-log cost growth; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, written = result["rows"], []
    colours = {}

    def colour(name: str) -> str:
        return colours.setdefault(name, f"C{len(colours)}")

    for suite in ("backbones", "panoptic", "components"):
        mine = [r for r in rows if r["suite"] == suite]
        if not mine:
            continue
        groups = list(dict.fromkeys((r["height"], r["width"], r["batch"], r["mode"]) for r in mine))
        names = list(dict.fromkeys(r["model"] for r in mine))
        fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) * len(names) / 2), 4))
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            values = [
                next(
                    (r["latency_ms"] for r in mine if r["model"] == name and g == _group_key(r)),
                    0,
                )
                for g in groups
            ]
            positions = [i + j * width for i in range(len(groups))]
            ax.bar(positions, values, width, label=name, color=colour(name))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
        ax.set_xticklabels([f"{h}x{w} b{b}\n{m}" for h, w, b, m in groups], fontsize=8)
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"{suite} ({result['meta']['device_name']}, {result['meta']['device']})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = f"{stem}_{suite}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    mine = [r for r in rows if r["suite"] == "scaling"]
    if mine:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name in dict.fromkeys(r["model"] for r in mine):
            pts = [r for r in mine if r["model"] == name]
            mp = [r["height"] * r["width"] / 1e6 for r in pts]
            e = result["scaling_exponents"][name]
            style = {"color": colour(name)}
            label = f"{name} (exponent {fmt(e['latency'], '.2f')})"
            axes[0].loglog(mp, [r["latency_ms"] for r in pts], "o-", label=label, **style)
            if all(r["peak_memory_mib"] for r in pts):
                label = f"{name} (exponent {fmt(e['peak_memory'], '.2f')})"
                memory = [r["peak_memory_mib"] for r in pts]
                axes[1].loglog(mp, memory, "o-", label=label, **style)
        axes[0].set_ylabel("median latency (ms)")
        axes[1].set_ylabel("peak memory (MiB)")
        for ax in axes:
            ax.set_xlabel("megapixels")
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"cost growth, inference, batch 1 ({result['meta']['device']})")
        fig.tight_layout()
        path = f"{stem}_scaling.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _group_key(r: dict) -> tuple:
    return (r["height"], r["width"], r["batch"], r["mode"])
