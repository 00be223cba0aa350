"""The learning-dynamics experiment's report: one self-contained HTML file in its out directory.

`premem experiment probes` writes it. The page: what was run; the squeezing verdict of every run
of every seed; the extend comparison (how much less chosen falls under the same DPO after the
extend recipe's SFT, paired by prompt); what SFT moves, averaged over seeds; then each seed's
"Learning dynamics" section as `premem report` draws it for one store (plots and tables).
The numbers are premem.metrics.probe_analysis' `verdicts`, `extend_comparison` and `sft_moves`.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from premem.files import atomic_path
from premem.metrics.probe_analysis import SeedScores, extend_comparison, sft_moves, verdicts
from premem.report.page import PAGE, section
from premem.report.probes import probe_section


def build_experiment_report(out_dir: Path, results: list[SeedScores], moves: pd.DataFrame, cfg) -> Path:
    """Write out_dir/report.html. moves: moves_table(results); cfg: the experiment's settings (a ProbesConfig:
    pairs, rejected, sft, dpo, dpo_from and probes are shown)."""
    out = Path(out_dir) / "report.html"
    ext = extend_comparison(results, cfg.dpo_from)
    parts = [
        summary(out_dir, cfg, results),
        section("Squeezing verdicts", frame(verdicts(results)) + (
            '<p class="caption">Change of summed log π(y|x) from each run\'s first checkpoint (step 0: the model it '
            "started from) to its last: mean ± standard error over probe prompts, and how many prompts' went up. "
            "Squeezing: greedy up while chosen and rejected both go down, each by at least two standard errors.</p>")),
        section("The extend recipe: chosen's fall under the same DPO", extend_html(ext)),
        section("What SFT moves (mean over seeds)", sft_html(moves)),
    ]
    for r in results:
        parts.append(section(f"Seed {r.seed}: learning dynamics (probes)", probe_section(r.scores, r.runs)))
    page = PAGE.format(title=escape(f"premem probes experiment: {Path(out_dir).resolve().name}"), body="\n".join(parts))
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def summary(out_dir: Path, cfg, results) -> str:
    facts = [
        ("experiment", f"<code>{escape(str(Path(out_dir).resolve()))}</code>"),
        ("seeds", ", ".join(str(r.seed) for r in results)),
        ("preference pairs", f"{cfg.pairs} per seed; rejected: {escape(cfg.rejected)}"),
        ("SFT", f"lr {cfg.sft.lr:g}, {cfg.sft.epochs} epochs, batch {cfg.sft.batch_size}"),
        ("DPO", f"beta {cfg.dpo.beta:g}, lr {cfg.dpo.lr:g}, {cfg.dpo.epochs} epochs, batch {cfg.dpo.batch_size}, "
                f"from SFT epoch{'s' * (len(cfg.dpo_from) > 1)} {', '.join(map(str, cfg.dpo_from))}"),
        ("probe prompts", f"{cfg.probes} per seed"),
        ("runs", ", ".join(escape(r) for r in results[0].runs)),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return (
        "<h1>premem probes experiment</h1>\n"
        "<p>How finetuning moves the model's confidence in responses it is not trained on (Ren &amp; Sutherland). "
        "SFT on the chosen responses; off-policy DPO from an SFT checkpoint; and the extend recipe: SFT on chosen "
        "and rejected, then the same DPO. Probe responses are scored at every checkpoint of every run.</p>\n"
        f'<table class="facts">{rows}</table>'
    )


def frame(df: pd.DataFrame, float_format: str = "{:+.2f}") -> str:
    return df.to_html(index=False, classes="grid", border=0, float_format=float_format.format, na_rep="–")


def extend_html(ext: pd.DataFrame) -> str:
    mean = ext.groupby("from_epoch")[["dpo_chosen", "extend_chosen", "difference"]].agg(["mean", "std"])
    rows = []
    for k, m in mean.iterrows():
        n = int((ext["from_epoch"] == k).sum())
        rows.append(f"<tr><td>{k}</td>" + "".join(
            f'<td class="num">{m[(c, "mean")]:+.2f}' + ("" if n < 2 else f' ± {m[(c, "std")]:.2f}') + "</td>"
            for c in ("dpo_chosen", "extend_chosen", "difference")) + f'<td class="num">{n}</td></tr>')
    head = ("<tr><th>DPO from SFT epoch</th><th>chosen's move, dpo</th><th>chosen's move, extend-dpo</th>"
            "<th>extend − dpo</th><th>seeds</th></tr>")
    return (f'<table class="grid">{head}{"".join(rows)}</table>\n'
            '<p class="caption">Mean ± std over seeds of the change of chosen\'s summed log-prob over DPO. '
            "Positive extend − dpo: chosen falls less after the extend recipe's SFT. Per seed, paired by prompt "
            "(mean ± standard error over prompts, and how many prompts' chosen fell less):</p>\n"
            + frame(ext))


def sft_html(moves: pd.DataFrame) -> str:
    table = sft_moves(moves)
    if table.empty:
        return "<p>No SFT runs.</p>"
    return (frame(table.reset_index(), "{:+.1f}") +
            '<p class="caption">Change of the mean summed log-prob per type, mean over seeds. all: from the base '
            "model (step 0) to the last checkpoint; trained: from the first checkpoint (one epoch) on. The first epoch "
            "also teaches the base model the traces' format, which lifts every response at first.</p>")
