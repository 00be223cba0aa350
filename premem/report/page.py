"""The pieces every HTML page of premem is made of: the page template (inline CSS, no scripts or links),
sections, and figures as inline PNGs. report.html, report.probes, report.probe_experiment and
report.curation all build on it, so it imports none of them."""

from __future__ import annotations

from html import escape

from premem.report import plots
from premem.version import __version__


def section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>\n{body}\n</section>"


def figure(fig, caption: str) -> str:
    """A matplotlib figure as an inline PNG; caption is HTML."""
    alt = escape(fig.axes[0].get_title() or caption, quote=True) if fig.axes else ""
    return (f'<figure><img src="data:image/png;base64,{plots.png_base64(fig)}" alt="{alt}">'
            f"<figcaption>{caption}</figcaption></figure>")


PAGE = (
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>{title}</title>\n<style>\n"
    "body {{ font-family: system-ui, sans-serif; max-width: 1400px; margin: 1.5em auto; padding: 0 1em; color: #222; }}\n"
    "h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }}\n"
    "table {{ border-collapse: collapse; font-size: 0.9em; }} table.runs {{ font-size: 0.8em; }}\n"
    "td, th {{ padding: 0.25em 0.6em; text-align: left; vertical-align: top; }} table.grid td {{ white-space: nowrap; }}\n"
    "table.grid td, table.grid th {{ border: 1px solid #ddd; }} table.grid th {{ background: #f4f4f4; }}\n"
    "th.derived {{ background: #eef3fa !important; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}\n"
    "table.facts th {{ font-weight: 600; padding-left: 0; }}\n"
    "figure {{ margin: 0.5em 0; }} figure img {{ max-width: 100%; height: auto; }}\n"
    "figcaption {{ font-size: 0.85em; color: #555; }} .note {{ background: #fff6dd; padding: 0.5em 0.8em; }}\n"
    ".wide {{ overflow-x: auto; }} code {{ font-size: 0.95em; }}\n"
    "</style></head><body>\n{body}\n"
    f"<footer><p style=\"color:#888;font-size:0.8em\">premem {__version__}</p></footer>\n"
    "</body></html>\n"
)
