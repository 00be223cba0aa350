"""Figures. Matplotlib with the Agg backend: no display needed, same pixels everywhere."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from premem.files import atomic_path  # noqa: E402
from premem.metrics.predict import Prediction  # noqa: E402


def prediction_scatter(pred: Prediction, out: str | Path) -> Path:
    """Predicted against actual test accuracy, one marker per checkpoint, one colour per run.

    Predictions are the leave-one-run-out ones: each run as if it were new.
    """
    pts = pred.points.dropna(subset=["test_acc"])
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # runs often outnumber tab10's colours
    for run, g in pts.groupby("run", sort=True):
        ax.plot(g["test_acc"], g["predicted_loro"], marker="o", linestyle="-", linewidth=0.8, markersize=5, label=run)
    lo = min(pts["test_acc"].min(), pts["predicted_loro"].min()) - 0.02
    hi = max(pts["test_acc"].max(), pts["predicted_loro"].max()) + 0.02
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("actual test accuracy")
    ax.set_ylabel("predicted test accuracy (run held out)")
    ax.set_title(
        f"pre-memorization accuracy, tau={pred.tau:g}: R²={pred.r2:.3f}, "
        f"leave-one-run-out R²={pred.r2_loro:.3f}",
        fontsize=9,
    )
    ax.legend(fontsize=6, loc="upper left", frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out
