"""Regenerate docs/reproduction.md: tune every method on validation, train each at its best
setting over several seeds, compare LAWN's onset rules and what it constrains, then write the
page from what the store holds.

    python -m trainers.reproduce --root runs/repro --parallel 2        # everything (about 40 minutes)
    python -m trainers.reproduce --root runs/repro --stages doc        # only the page, from the store
    python -m trainers.reproduce --root /tmp/rq --quick --out /tmp/quick.md   # a smoke test, a minute

The package: ``plan`` (settings, stages, resuming, the worker pool), ``collect`` (store -> one row
per run), ``analysis`` (pure functions: means, intervals, verdicts), ``render`` and
``template.md`` (the page). Stages are listed in ``plan``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError
from .plan import STAGES, plan_stage, run_stage, run_tune, setup, workers
from .provenance import PROJECT_DIR
from .render import write_doc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/repro", help="the store the runs go to and the page is read from")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one worker process, one thread each)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    parser.add_argument("--quick", action="store_true", help="a few short runs on digits, to check the machinery")
    parser.add_argument("--out", default=str(PROJECT_DIR / "docs" / "reproduction.md"), help="the page to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage {', '.join(unknown)}: choose from {', '.join(STAGES)}")
    if args.parallel < 1:
        parser.error(f"--parallel must be at least 1, got {args.parallel}")
    s = setup(args.quick)
    try:
        with workers(args.parallel if stages != ["doc"] else 1) as pool:
            for stage in stages:
                if stage == "tune":
                    run_tune(s, args.root, pool)
                elif stage != "doc":
                    run_stage(args.root, plan_stage(stage, s, args.root), pool)
                if "doc" in stages:  # the page follows every stage: a valid one at every point
                    write_doc(args.root, Path(args.out), s)
    except ConfigError as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    return 0
