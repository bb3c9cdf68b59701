"""The benchmark (not a test): national-size generation and releases, with figures printed.

`valueadded bench` generates the cohort, starts Spark, runs each key stage's release in
both data stages, and prints wall seconds per stage, pupils per second, and the peak
memory of the Python driver and of the Spark JVM. It never asserts a time.
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path

from valueadded.config import load_release_config


def _jvm_peak_mib(spark) -> float | None:
    try:
        pid = spark._jvm.java.lang.ProcessHandle.current().pid()  # noqa: SLF001
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except Exception:  # not Linux, or no local JVM (a cluster): no figure rather than a wrong one
        return None
    return None


def _python_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmark(year: int, seed: int, scale: float, work_dir: Path) -> list[dict]:
    """Generate, release, and print the figures; return them as rows."""
    from valueadded.pipeline import run_release
    from valueadded.spark import get_spark
    from valueadded.synth.cohort import generate_cohort

    shutil.rmtree(work_dir, ignore_errors=True)
    input_dir, output_dir = work_dir / "input", work_dir / "output"
    config = load_release_config()

    started = time.perf_counter()
    manifest = generate_cohort(input_dir, year=year, seed=seed, scale=scale)
    generate_seconds = time.perf_counter() - started
    generate_peak = _python_peak_mib()

    started = time.perf_counter()
    spark = get_spark(shuffle_partitions=config.shuffle_partitions)
    spark.range(1).count()
    spark_seconds = time.perf_counter() - started

    rows = []
    for key_stage in ("ks2", "ks4"):
        for data_stage in ("unvalidated", "validated"):
            started = time.perf_counter()
            record = run_release(spark, config, input_dir, output_dir, year, key_stage, data_stage, "bench")
            seconds = time.perf_counter() - started
            pupils = record.row_counts["inputs"]["pupils"]["rows_in_scope"]
            rows.append({"key_stage": key_stage, "data_stage": data_stage, "pupils": pupils, "seconds": seconds, "stages": record.stage_timings})

    counts = manifest.get("row_counts", {})
    print(f"\nvalueadded benchmark: year {year}, seed {seed}, scale {scale:g}")
    print(f"  generate: {generate_seconds:6.1f} s  ({', '.join(f'{k} {v:,}' for k, v in counts.items())}); driver peak {generate_peak:,.0f} MiB")
    print(f"  spark session start: {spark_seconds:.1f} s")
    for row in rows:
        stages = "  ".join(f"{name} {seconds:.1f}" for name, seconds in row["stages"].items())
        print(
            f"  release {row['key_stage']} {row['data_stage']:<11}: {row['seconds']:6.1f} s  "
            f"{row['pupils'] / row['seconds']:>9,.0f} pupils/s  [{stages}]"
        )
    jvm_peak = _jvm_peak_mib(spark)
    print(f"  peak memory: Python driver {_python_peak_mib():,.0f} MiB; Spark JVM {'n/a' if jvm_peak is None else f'{jvm_peak:,.0f} MiB'}")
    return rows
