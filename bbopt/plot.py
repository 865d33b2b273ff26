"""Pictures of a study: optimization history and one slice per parameter."""

from __future__ import annotations

import math
from pathlib import Path

from bbopt.space import Categorical, Float, Int
from bbopt.study import Study
from bbopt.trial import TrialState


def plot_study(study: Study, path: Path) -> None:
    """Write a PNG: values and best-so-far against trial id, then value against each
    parameter (log axes for log-scaled parameters, choices as ticks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    done = [t for t in study.trials if t.state is TrialState.COMPLETE]
    params = study.space.params
    panels = 1 + len(params)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    ax = axes.flat[0]
    ids = [t.id for t in done]
    values = [t.value for t in done]
    pick = min if study.direction == "minimize" else max
    running = [pick(values[: i + 1]) for i in range(len(values))]
    ax.scatter(ids, values, s=12, alpha=0.6, label="value")
    ax.step(ids, running, where="post", color="C3", label="best so far")
    ax.set_title(f"{study.name}: history ({study.method})")
    ax.set_xlabel("trial")
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    for ax, (name, p) in zip(list(axes.flat)[1:], params.items(), strict=False):
        xs = [t.params[name] for t in done]
        if isinstance(p, Categorical):
            pos = {repr(c): i for i, c in enumerate(p.choices)}
            ax.scatter([pos[repr(x)] for x in xs], values, s=12, alpha=0.6, c=ids, cmap="viridis")
            ax.set_xticks(range(len(p.choices)), [str(c) for c in p.choices])
        else:
            ax.scatter(xs, values, s=12, alpha=0.6, c=ids, cmap="viridis")
            if isinstance(p, Float | Int) and p.log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap
        ax.set_title(f"slice: {name}")
        ax.set_xlabel(name)
        ax.set_ylabel("value")
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
