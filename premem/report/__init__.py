"""Plots and reports built from a score store: `build_report` writes the self-contained HTML report."""

from premem.report.html import build_report

__all__ = ["build_report"]
