"""The report's figures on the edge cases real stores produce."""

import numpy as np
import pandas as pd

from premem.report import plots


def test_forecast_curves_draw_a_prediction_below_zero():
    # a fitted line with a negative intercept predicts below 0 at pre-memorization accuracy 0, while the band is
    # clipped to [0, 1]: the band's lower edge sits above the prediction (the skills quickstart's store had this)
    table = pd.DataFrame({"run": ["a", "a", "b"], "step": [1, 2, 1], "premem": [0.0, 0.2, 0.5],
                          "predicted": [-0.044, 0.23, 0.64], "lower": [0.0, 0.1, 0.51], "upper": [0.09, 0.36, 0.77],
                          "test_acc": [0.02, np.nan, 0.6], "in_fit": [True, True, False]})
    fig = plots.forecast_curves(table, ["a", "b"], {"a": "a", "b": "b"}, 0.9)
    ax = fig.axes[0]
    bars = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    segments = np.concatenate([b.get_segments() for b in bars])
    # every bar runs upward, none below 0 at the prediction under 0, and each ends at its band's edges
    assert all(seg[0][1] <= seg[1][1] for seg in segments)
    assert np.isclose(max(seg[1][1] for seg in segments), 0.36)
