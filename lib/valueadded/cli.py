"""The one command line: `valueadded generate | release | report | snapshot | docs | bench`.

Exit codes: 0 success; 1 internal error (a defect: please report it); 2 bad input or
configuration (a missing file or column, a wrong type, an unreadable CSV, a bad config
key, a CVA model the data cannot estimate, no usable pupil pseudonym key, an output
folder of an earlier schema version); 3 validation threshold exceeded (too many
rejected rows; see `rejected_rows`); 4 another run is releasing the same partition.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from valueadded.bench import DEFAULT_RELEASES, parse_releases
from valueadded.config import CVA_EMPTY_TERMS, ConfigError, load_release_config
from valueadded.cva.reml import RemlError
from valueadded.io.inputs import StructuralInputError
from valueadded.io.intake import ValidationThresholdError
from valueadded.io.pseudonym import DEFAULT_KEY_VARIABLE, MIN_KEY_BYTES
from valueadded.io.publish import PartitionLockedError

log = logging.getLogger("valueadded")

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_THRESHOLD, EXIT_BUSY = 0, 1, 2, 3, 4
DEFAULT_YEAR = 2024
DEFAULT_SEED = 20240
DEFAULT_DATA_DIR = Path("data")
DEFAULT_OUTPUT_DIR = Path("output")


def _expand(value: str, choices: tuple[str, ...]) -> list[str]:
    return list(choices) if value == "both" else [value]


def generated_input_dir(year: int, seed: int, scale: float) -> Path:
    return DEFAULT_DATA_DIR / f"generated-{year}-seed{seed}-scale{scale:g}"


def ensure_generated(out_dir: Path, year: int, seed: int, scale: float) -> Path:
    """Generate the national cohort into out_dir unless a matching one is already there."""
    from valueadded.synth.cohort import generate_cohort

    manifest = out_dir / "manifest.json"
    if manifest.is_file():
        content = json.loads(manifest.read_text())
        if (content.get("year"), content.get("seed"), float(content.get("scale", -1))) == (year, seed, float(scale)):
            log.info("using the generated cohort already in %s", out_dir)
            return out_dir
    started = time.perf_counter()
    generate_cohort(out_dir, year=year, seed=seed, scale=scale)
    log.info("generated the national cohort in %s (%.1f s)", out_dir, time.perf_counter() - started)
    return out_dir


def cmd_generate(args: argparse.Namespace) -> int:
    from valueadded.synth.cohort import generate_cohort

    started = time.perf_counter()
    manifest = generate_cohort(Path(args.out), year=args.year, seed=args.seed, scale=args.scale, files=args.files)
    print(json.dumps({"out": str(args.out), "seconds": round(time.perf_counter() - started, 1), **manifest}, indent=2, default=str))
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    from valueadded.io.pseudonym import PseudonymKey
    from valueadded.pipeline import DATA_STAGES, KEY_STAGES, run_release
    from valueadded.spark import get_spark

    # First: a release without its key stops before reading or generating anything.
    pseudonym_key = PseudonymKey.from_environment(args.pseudonym_key_env)
    config = load_release_config(args.config)
    if args.published_estimates:
        from valueadded.measures.published import with_published_estimates

        config = with_published_estimates(config, args.published_estimates)
    if args.cva_empty_terms:
        config = dataclasses.replace(config, cva_empty_terms=args.cva_empty_terms)
    input_dir = Path(args.input) if args.input else ensure_generated(generated_input_dir(args.year, DEFAULT_SEED, 1.0), args.year, DEFAULT_SEED, 1.0)
    output_dir = Path(args.output)
    spark = get_spark(shuffle_partitions=config.shuffle_partitions)
    command = " ".join(shlex.quote(a) for a in sys.argv)
    runs = []
    for key_stage in _expand(args.key_stage, KEY_STAGES):
        for data_stage in _expand(args.stage, DATA_STAGES):
            record = run_release(spark, config, input_dir, output_dir, args.year, key_stage, data_stage, command, pseudonym_key)
            runs.append(record)
            pupils = record.row_counts["pupil_results"]
            print(
                f"{args.year} {key_stage} {data_stage}: {pupils['included']} pupils included, {pupils['excluded']} excluded, "
                f"{sum(c['rows_rejected'] for c in record.row_counts['inputs'].values())} input rows rejected "
                f"(run {record.run_id}, {sum(record.stage_timings.values()):.1f} s)"
            )
    print(f"Results: Delta tables under {output_dir.resolve()} (published/ for dashboards, restricted/ for pupil-level and run log)")
    if args.report:
        from valueadded.report import write_report

        for record in runs:
            path = write_report(output_dir, record.year, record.key_stage, record.data_stage, run_id=record.run_id)
            print(f"Report: {path.resolve()}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from valueadded.report import write_report

    started = time.perf_counter()
    path = write_report(Path(args.output), args.year, args.key_stage, args.stage, to=args.to and Path(args.to), run_id=args.run)
    print(f"Report: {path.resolve()} ({time.perf_counter() - started:.1f} s); open it in any browser, it needs no network")
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    from valueadded.io.snapshot import export_run

    rows = export_run(Path(args.output), args.run, Path(args.to))
    for name, count in rows.items():
        print(f"{name}: {count:,} rows")
    print(f"Run {args.run} as published: Parquet files and manifest.json in {Path(args.to).resolve()}")
    return EXIT_OK


def cmd_docs(args: argparse.Namespace) -> int:
    from valueadded.docs import write_docs

    for path in write_docs(Path(args.out)):
        print(path)
    return EXIT_OK


def _bench_releases(text: str) -> tuple[tuple[str, str], ...]:
    try:
        return parse_releases(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def cmd_bench(args: argparse.Namespace) -> int:
    from valueadded.bench import run_benchmark, run_cva_benchmark

    if args.cva:
        run_cva_benchmark(year=args.year, seed=args.seed, scale=args.scale, work_dir=Path(args.work_dir), statsmodels=args.statsmodels)
        return EXIT_OK
    run_benchmark(year=args.year, seed=args.seed, scale=args.scale, work_dir=Path(args.work_dir), releases=args.releases or DEFAULT_RELEASES)
    return EXIT_OK


def check_bench_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options of one benchmark given to the other (argparse's usage error, exit 2):
    a figure printed for something other than what was asked is worse than none."""
    if args.cva and args.releases is not None:
        parser.error("bench: --releases chooses the releases of the release benchmark; --cva runs the CVA engine alone, on the KS4 cohort")
    if args.statsmodels and not args.cva:
        parser.error("bench: --statsmodels times statsmodels beside the CVA engine: it needs --cva")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valueadded", description="National school value-added release engine")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    generate = sub.add_parser("generate", help="write a generated England-shaped national cohort")
    generate.add_argument("--out", required=True, help="folder to write the input tables into")
    generate.add_argument("--year", type=int, default=DEFAULT_YEAR, help="academic year, e.g. 2024 for 2023/24")
    generate.add_argument("--seed", type=int, default=DEFAULT_SEED)
    generate.add_argument("--scale", type=float, default=1.0, help="1 = national size (~650k KS2, ~600k KS4 pupils)")
    generate.add_argument("--files", type=int, default=4, help="Parquet part files per pupil table (does not change the data)")
    generate.set_defaults(handler=cmd_generate)

    release = sub.add_parser("release", help="run a release and write its Delta tables")
    release.add_argument("--input", help="input folder (docs/inputs.md); default: the generated national cohort")
    release.add_argument("--output", default=str(DEFAULT_OUTPUT_DIR), help="output root for the Delta tables")
    release.add_argument("--year", type=int, default=DEFAULT_YEAR)
    release.add_argument("--key-stage", choices=("ks2", "ks4", "both"), default="both")
    release.add_argument("--stage", choices=("unvalidated", "validated", "both"), default="unvalidated", help="data stage")
    release.add_argument("--config", help="release configuration YAML (default conf/releases/default.yaml)")
    release.add_argument(
        "--cva-empty-terms", choices=CVA_EMPTY_TERMS,
        help="a CVA term no pupil has: stop the release or drop the term (overrides --config)",
    )
    release.add_argument("--published-estimates", metavar="NAME", help="apply published estimates conf/reference/published/NAME (overrides --config)")
    release.add_argument(
        "--pseudonym-key-env", metavar="NAME", default=DEFAULT_KEY_VARIABLE,
        help=f"environment variable holding the pupil pseudonym key (default {DEFAULT_KEY_VARIABLE}; at least {MIN_KEY_BYTES} bytes)",
    )
    release.add_argument(
        "--report", action="store_true",
        help="at the end, write each run's HTML report to OUTPUT/reports/report-<year>-<key stage>-<stage>.html",
    )
    release.set_defaults(handler=cmd_release)

    report = sub.add_parser("report", help="write the self-contained HTML report of a release (from its Delta tables)")
    report.add_argument("--output", default=str(DEFAULT_OUTPUT_DIR), help="the release's output root (its Delta tables)")
    report.add_argument("--year", type=int, default=DEFAULT_YEAR)
    report.add_argument("--key-stage", choices=("ks2", "ks4"), required=True)
    report.add_argument("--stage", choices=("unvalidated", "validated"), required=True, help="data stage")
    report.add_argument("--run", help="run id to report on (default: the partition's last succeeded run)")
    report.add_argument("--to", help="HTML file to write (default OUTPUT/reports/report-<year>-<key stage>-<stage>.html)")
    report.set_defaults(handler=cmd_report)

    snapshot = sub.add_parser("snapshot", help="write every table of an earlier run exactly as it published them (from the run log)")
    snapshot.add_argument("--output", default=str(DEFAULT_OUTPUT_DIR), help="the release's output root (holding restricted/runs)")
    snapshot.add_argument("--run", required=True, help="run id, from the runs table")
    snapshot.add_argument("--to", required=True, help="folder to write <table>.parquet files and manifest.json into")
    snapshot.set_defaults(handler=cmd_snapshot)

    docs = sub.add_parser("docs", help="regenerate docs/inputs.md, tables.md and validation.md from the code")
    docs.add_argument("--out", default="docs")
    docs.set_defaults(handler=cmd_docs)

    bench = sub.add_parser("bench", help="benchmark generation and release on the national cohort (prints figures)")
    bench.add_argument("--year", type=int, default=DEFAULT_YEAR)
    bench.add_argument("--seed", type=int, default=DEFAULT_SEED)
    bench.add_argument("--scale", type=float, default=1.0)
    bench.add_argument("--work-dir", default="bench-work", help="scratch folder (replaced)")
    bench.add_argument(
        "--releases", type=_bench_releases, default=None, metavar="KS[:STAGE],...",
        help="the releases to run, in this order, in one session (the first also warms the JVM); e.g. ks4 or "
        "ks4:unvalidated,ks2:validated; default ks2,ks4 (each unvalidated, then validated)",
    )
    bench.add_argument("--cva", action="store_true", help="benchmark the CVA engine instead: KS4 design, gather and REML fit (not with --releases)")
    bench.add_argument("--statsmodels", action="store_true", help="with --cva: also time statsmodels MixedLM on the same data")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        check_bench_options(parser, args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except (StructuralInputError, ConfigError, RemlError) as error:
        log.error("bad input: %s", error)
        return EXIT_BAD_INPUT
    except ValidationThresholdError as error:
        log.error("validation threshold: %s", error)
        return EXIT_THRESHOLD
    except PartitionLockedError as error:
        log.error("partition busy: %s", error)
        return EXIT_BUSY
    except Exception:  # anything else is a defect, reported with its traceback
        log.exception("internal error")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
