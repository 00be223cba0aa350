"""Plots and reports built from a score store."""
