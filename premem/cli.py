"""The `premem` command: one entry, verbs mapped to plain functions of the Python API.

Each verb parses its arguments, calls the library, and prints. Bad input anywhere raises
premem.errors.InputError, which ends here as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from premem import __version__
from premem.errors import InputError

log = logging.getLogger("premem")


# -- predict ---------------------------------------------------------------------------------


def _tau(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def cmd_predict(args: argparse.Namespace) -> int:
    from premem.metrics.predict import predict
    from premem.metrics.premem import FEATURES, TrainingCurves
    from premem.store import ScoreStore

    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--plot {args.plot}: use a .png, .svg or .pdf file name")
    curves = TrainingCurves.from_store(ScoreStore(args.store))
    pred = predict(curves, args.tau)
    if args.plot:
        from premem.report.plots import prediction_scatter

        prediction_scatter(pred, args.plot)
    if args.json:
        print(json.dumps(pred.to_dict(), indent=None if args.compact else 1))
        return 0

    print(
        f"{pred.n_runs} runs, {pred.n_points} checkpoints with test scores; "
        f"tau = {pred.tau:g} ({pred.tau_mode}; memorized when log(log(ppl)) < tau)"
    )
    print(f"test_acc ~ {pred.slope:.3f} * premem + {pred.intercept:.3f}\n")
    rows = [("premem", FEATURES["premem"], pred.r2, pred.r2_loro, pred.mae, pred.mae_loro)]
    rows += [(k, FEATURES[k], b.r2, b.r2_loro, b.mae, b.mae_loro) for k, b in pred.baselines.items()]
    print(f"{'predictor':<34} {'R2':>7} {'LORO R2':>8} {'MAE':>7} {'LORO MAE':>9}")
    for _, label, r2, r2l, mae, mael in rows:
        print(f"{label:<34} {r2:>7.3f} {r2l:>8.3f} {mae:>7.3f} {mael:>9.3f}")
    if pred.tau_per_run:
        print(f"\ntau chosen for each held-out run: {sorted(set(pred.tau_per_run.values()))}")
    cols = ["run", "step", "premem", "train_acc", "frac_memorized", "test_acc", "predicted", "predicted_loro"]
    print("\n" + pred.points[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if args.plot:
        print(f"\nplot: {args.plot}")
    return 0


# -- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="premem",
        description="Pre-memorization data curation for LLM finetuning: score runs, predict test accuracy, curate data.",
    )
    parser.add_argument("--version", action="version", version=f"premem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "predict",
        help="predict test accuracy from training metrics",
        description="Fit test accuracy against run-mean pre-memorization train accuracy over every "
        "(run, checkpoint) of a score store; report R², leave-one-run-out R² and MAE, with baselines.",
    )
    p.add_argument("--store", required=True, help="score store directory (runs/train_scores/test_scores.parquet)")
    p.add_argument(
        "--tau",
        type=_tau,
        default=-2.3,
        help="memorization threshold on log(log(perplexity)) (default -2.3, the paper's GSM8K value), "
        "or 'auto' to choose it by nested leave-one-run-out",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--compact", action="store_true", help="with --json: on one line")
    p.add_argument("--plot", metavar="FILE", help="write a predicted-vs-actual scatter plot (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_predict)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"premem: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `premem ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("premem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
