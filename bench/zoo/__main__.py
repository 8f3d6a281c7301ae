"""``python -m varrt.bench.zoo [options]``: the sweep's command line (see varrt.bench.zoo)."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from varrt.bench.zoo import matrix, sweep
from varrt.bench.zoo.catalog import CATALOG, EXPORTERS, FRAMEWORKS, QUICK, TINY, Entry
from varrt.bench.zoo.harness import FORMS, METHODS
from varrt.core.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m varrt.bench.zoo", description=__doc__)
    p.add_argument("--out", default="zoo-results", help="results folder (default: %(default)s)")
    p.add_argument("--exporters", default="", help=f"comma list of {', '.join(EXPORTERS)} or timm, keras, paddle")
    p.add_argument("--models", default="", help="comma list of model names (default: the whole catalog)")
    p.add_argument("--forms", default=",".join(FORMS), help="comma list of %(default)s")
    p.add_argument("--methods", default="gradient", help=f"comma list of {', '.join(METHODS)} (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="one model per family and exporter")
    p.add_argument("--tiny", action="store_true", help="the CI models (tiny, 64x64), seconds each")
    p.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="build models at most this high and wide where the architecture allows (a faster sweep)",
    )
    p.add_argument("--timeout", type=float, default=1200, help="seconds per model (default: %(default)s)")
    p.add_argument("--rerun", action="store_true", help="check cells that results.jsonl already has again")
    p.add_argument("--list", action="store_true", help="print the catalog and exit")
    p.add_argument("--readme", action="store_true", help="print the README's support-table section and exit")
    p.add_argument("--worker", nargs=2, metavar=("EXPORTER", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _choices(text: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise UsageError(f"unknown {what} {', '.join(unknown)}: choose from {', '.join(allowed)}")
    if not chosen:
        raise UsageError(f"no {what} given: choose from {', '.join(allowed)}")
    return chosen


def select(args: argparse.Namespace) -> list[Entry]:
    """The catalog rows the options pick."""
    entries = TINY if args.tiny else [e for e in CATALOG if not args.quick or (e.exporter, e.model) in QUICK]
    if args.exporters:
        names = _choices(args.exporters, [*EXPORTERS, *sorted(set(FRAMEWORKS.values()))], "exporter")
        entries = [e for e in entries if e.exporter in names or FRAMEWORKS[e.exporter] in names]
    if args.models:
        names = _choices(args.models, sorted({e.model for e in entries} | {e.key for e in entries}), "model")
        entries = [e for e in entries if e.model in names or e.key in names]
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        forms = _choices(args.forms, FORMS, "form")
        methods = _choices(args.methods, METHODS, "method")
        out = pathlib.Path(args.out)
        if args.worker:
            exporter, model = args.worker
            family = next((e.family for e in [*CATALOG, *TINY] if e.exporter == exporter and e.model == model), "?")
            sweep.worker(Entry(exporter, model, family, args.size), forms, methods, out, args.max_size)
            return 0
        if args.timeout <= 0:
            raise UsageError(f"--timeout must be positive, got {args.timeout:g}")
        if args.max_size is not None and args.max_size < 32:
            raise UsageError(f"--max-size must be at least 32, got {args.max_size}")
        entries = select(args)
        if args.list:
            print("\n".join(f"{e.exporter:20s} {e.family:7s} {e.key}" for e in entries))
            return 0
        if args.readme:
            if not (out / matrix.RESULTS).is_file():
                raise UsageError(f"{out / matrix.RESULTS} does not exist: run the sweep first (--out)")
            print(matrix.readme_section(matrix.read(out)), end="")
            return 0
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    records = sweep.sweep(entries, forms, methods, out, args.timeout, args.rerun, args.max_size)
    for method in methods:
        print("\n" + matrix.summary(records, method) + "\n\n" + matrix.failures(records, method))
    print(f"\nwrote {out / 'matrix.md'}, matrix.csv, matrix.json ({out / matrix.RESULTS} resumes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
