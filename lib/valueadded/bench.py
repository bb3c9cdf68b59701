"""The benchmark (not a test): national-size generation and releases, with figures printed.

`valueadded bench` generates the cohort, starts Spark, runs each key stage's release in
both data stages (or the releases `--releases` lists, in its order), and prints wall
seconds per stage, pupils per second, and the peak memory of the Python driver and of
the Spark JVM. For a local session it also prints, per release, the CPU seconds the
machine spent busy, the CPU seconds of Spark's tasks (the JVM's work on the data), and of the
JVM's own work the seconds its JIT compiler took and the garbage collector paused: on a
2-core machine a release is CPU-bound, and these say how much of it is not the data. It
never asserts a time.

`valueadded bench --cva` measures the CVA engine alone on the KS4 cohort with the full
KS2-4 specification (conf/models/ks4_mainstream.yaml): building the design in Spark, the
one-pass gather of the sufficient statistics and the REML fit (each repeated in the same
running session), the four-stage prediction; with `--statsmodels`, statsmodels' MixedLM
REML fit (default optimiser) on the same design, for the ratio.
"""

from __future__ import annotations

import os
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


def busy_cpu_seconds(stat_line: str, ticks_per_second: int) -> float:
    """CPU seconds spent busy, from the `cpu` line of /proc/stat (all cores together).

    Busy: user, nice, system, irq, softirq and steal; idle and iowait are not. The guest
    columns, if any, are already counted in user and nice.
    """
    fields = [int(value) for value in stat_line.split()[1:9]]
    idle, iowait = fields[3], fields[4] if len(fields) > 4 else 0
    return (sum(fields) - idle - iowait) / ticks_per_second


def _machine_busy_seconds() -> float | None:
    try:
        first = Path("/proc/stat").read_text().splitlines()[0]
        return busy_cpu_seconds(first, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):  # not Linux: no figure rather than a wrong one
        return None


def jvm_work_seconds(spark) -> tuple[float, float] | None:
    """(JIT compilation, garbage collection pauses) in seconds, since the JVM started.

    The driver JVM's own figures: for a local session that is the executor too; on a
    cluster the executors' are elsewhere, so there is no figure (None).
    """
    if not spark.sparkContext.master.startswith("local"):
        return None
    try:
        beans = spark._jvm.java.lang.management.ManagementFactory  # noqa: SLF001
        compiled = beans.getCompilationMXBean().getTotalCompilationTime() / 1000
        collected = sum(bean.getCollectionTime() for bean in beans.getGarbageCollectorMXBeans()) / 1000
    except Exception:  # a JVM without these beans: no figure
        return None
    return compiled, collected


def last_stage_id(spark) -> int | None:
    """The highest stage id the session's status store keeps (-1: none yet; None: no store)."""
    stages = _stage_list(spark)
    if stages is None:
        return None
    return max((stages.apply(i).stageId() for i in range(stages.size())), default=-1)


def task_cpu_seconds(spark, after_stage: int | None) -> float | None:
    """CPU seconds Spark's tasks spent in the stages after `after_stage` (the executors'
    own figure: the JVM's work on the data; not compiling, collecting garbage, planning,
    nor the Python workers of pandas UDFs and mapInArrow).

    The status store keeps the last 1,000 stages (`spark.ui.retainedStages`); a national
    release runs about 230.
    """
    stages = None if after_stage is None else _stage_list(spark)
    if stages is None:
        return None
    total = 0
    for i in range(stages.size()):
        stage = stages.apply(i)
        if stage.stageId() > after_stage:
            total += stage.executorCpuTime()
    return total / 1e9


def _stage_list(spark):
    """The stages of the session's status store (a Scala Seq), or None where it cannot be read."""
    try:
        context = spark.sparkContext
        # The store is filled from the listener bus, after the jobs end: wait for it.
        context._jsc.sc().listenerBus().waitUntilEmpty(10_000)  # noqa: SLF001
        no_quantiles = context._gateway.new_array(context._jvm.double, 0)  # noqa: SLF001
        # Spark 4's AppStatusStore.stageList(statuses, details, withSummaries, quantiles, taskStatuses).
        return context._jsc.sc().statusStore().stageList(None, False, False, no_quantiles, None)  # noqa: SLF001
    except Exception:  # another Spark version or a remote session: no figure
        return None


def cpu_line(busy: float | None, jvm: tuple[float, float] | None, seconds: float, cores: int, tasks: float | None = None) -> str:
    """The benchmark's CPU line for one release ('' without a figure)."""
    if busy is None:
        return ""
    line = f"CPU busy {busy:.0f} s ({busy / seconds:.2f} of {cores} cores)"
    if tasks is not None:
        line += f"; Spark's tasks {tasks:.0f} s"
    if jvm is not None:
        line += f"; the JVM compiling its code (JIT) {jvm[0]:.0f} s, paused for garbage collection {jvm[1]:.1f} s"
    return line


def _python_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


DEFAULT_RELEASES = (("ks2", "unvalidated"), ("ks2", "validated"), ("ks4", "unvalidated"), ("ks4", "validated"))


def parse_releases(text: str) -> tuple[tuple[str, str], ...]:
    """The releases to run, in order, from `ks4:unvalidated,ks2:validated` (`ks4` alone:
    both its data stages, unvalidated first). Raises ValueError naming what is wrong.

    The first release of a session also warms the JVM (its JIT compiles Spark as it
    runs), so the order decides which release's figure includes that.
    """
    from valueadded.pipeline import DATA_STAGES, KEY_STAGES

    releases: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_stage, _, data_stage = item.partition(":")
        if key_stage not in KEY_STAGES or (data_stage and data_stage not in DATA_STAGES):
            raise ValueError(
                f"release {item!r}: expected KEY_STAGE or KEY_STAGE:DATA_STAGE with a key stage of {', '.join(KEY_STAGES)} "
                f"and a data stage of {', '.join(DATA_STAGES)}"
            )
        for release in [(key_stage, data_stage)] if data_stage else [(key_stage, stage) for stage in DATA_STAGES]:
            if release in releases:
                raise ValueError(f"release {':'.join(release)} is listed twice")
            releases.append(release)
    if not releases:
        raise ValueError("no release to run")
    return tuple(releases)


def run_benchmark(
    year: int, seed: int, scale: float, work_dir: Path, releases: tuple[tuple[str, str], ...] = DEFAULT_RELEASES
) -> list[dict]:
    """Generate, run `releases` in order in one session, and print the figures; return them as rows."""
    from valueadded.io.pseudonym import PseudonymKey
    from valueadded.pipeline import run_release
    from valueadded.spark import get_spark
    from valueadded.synth import SYNTHETIC_COHORT_PSEUDONYM_KEY
    from valueadded.synth.cohort import generate_cohort

    pseudonym_key = PseudonymKey("valueadded.synth.SYNTHETIC_COHORT_PSEUDONYM_KEY", SYNTHETIC_COHORT_PSEUDONYM_KEY.encode())
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
    for key_stage, data_stage in releases:
        busy, jvm, stage = _machine_busy_seconds(), jvm_work_seconds(spark), last_stage_id(spark)
        started = time.perf_counter()
        record = run_release(spark, config, input_dir, output_dir, year, key_stage, data_stage, "bench", pseudonym_key)
        seconds = time.perf_counter() - started
        busy_after, jvm_after = _machine_busy_seconds(), jvm_work_seconds(spark)
        tasks = task_cpu_seconds(spark, stage)
        pupils = record.row_counts["inputs"]["pupils"]["rows_in_scope"]
        rows.append({
            "key_stage": key_stage, "data_stage": data_stage, "pupils": pupils, "seconds": seconds, "stages": record.stage_timings,
            "busy_cpu_seconds": None if busy is None or busy_after is None else busy_after - busy,
            "jvm_seconds": None if jvm is None or jvm_after is None else (jvm_after[0] - jvm[0], jvm_after[1] - jvm[1]),
            "task_cpu_seconds": tasks,
        })

    counts = manifest.get("row_counts", {})
    print(f"\nvalueadded benchmark: year {year}, seed {seed}, scale {scale:g}")
    print(f"  generate: {generate_seconds:6.1f} s  ({', '.join(f'{k} {v:,}' for k, v in counts.items())}); driver peak {generate_peak:,.0f} MiB")
    print(f"  spark session start: {spark_seconds:.1f} s; releases in this order, the first also warming the JVM")
    cores = os.cpu_count() or 1
    for row in rows:
        stages = "  ".join(f"{name} {seconds:.1f}" for name, seconds in row["stages"].items())
        without_cva = row["seconds"] - row["stages"].get("cva", 0.0)
        print(
            f"  release {row['key_stage']} {row['data_stage']:<11}: {row['seconds']:6.1f} s  "
            f"(without the CVA stage {without_cva:5.1f} s)  {row['pupils'] / row['seconds']:>9,.0f} pupils/s  [{stages}]"
        )
        cpu = cpu_line(row["busy_cpu_seconds"], row["jvm_seconds"], row["seconds"], cores, row["task_cpu_seconds"])
        if cpu:
            print(f"      {cpu}")
    jvm_peak = _jvm_peak_mib(spark)
    print(f"  peak memory: Python driver {_python_peak_mib():,.0f} MiB; Spark JVM {'n/a' if jvm_peak is None else f'{jvm_peak:,.0f} MiB'}")
    return rows


def _reuse_or_generate(input_dir: Path, year: int, seed: int, scale: float) -> dict:
    """The generated cohort in input_dir if it matches (year, seed, scale), else a new one."""
    import json

    from valueadded.synth.cohort import generate_cohort

    manifest = input_dir / "manifest.json"
    if manifest.is_file():
        content = json.loads(manifest.read_text())
        if (content.get("year"), content.get("seed"), float(content.get("scale", -1))) == (year, seed, float(scale)):
            return content
    shutil.rmtree(input_dir, ignore_errors=True)
    return generate_cohort(input_dir, year=year, seed=seed, scale=scale)


def run_cva_benchmark(year: int, seed: int, scale: float, work_dir: Path, statsmodels: bool = False, repeats: int = 3) -> dict:
    """Time the KS4 CVA model's design, gather, fit and prediction; optionally statsmodels'.

    The pupils are the release's: intake and pupil table of the unvalidated KS4 run, then
    the mainstream model's population (included pupils of state-funded mainstream schools
    with prior attainment and an outcome). Gather and fit are timed `repeats` times in the
    same session (the first gather also warms the Python workers).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from valueadded.cva.apply import predict
    from valueadded.cva.design import OUTCOME, design_column
    from valueadded.cva.fit import fit_statistics, gather_statistics
    from valueadded.cva.stage import GROUP, model_design, scored_population
    from valueadded.cva.spec import load_model_spec
    from valueadded.io.intake import run_intake
    from valueadded.measures.cohort import build_pupil_table
    from valueadded.spark import get_spark

    config = load_release_config()
    input_dir = Path(work_dir) / "input"
    started = time.perf_counter()
    _reuse_or_generate(input_dir, year, seed, scale)
    generate_seconds = time.perf_counter() - started

    spark = get_spark(shuffle_partitions=config.shuffle_partitions)
    spark.range(1).count()
    started = time.perf_counter()
    intake = run_intake(spark, input_dir, year, "ks4", "unvalidated", config.codes)
    pupils = build_pupil_table(intake.pupils, intake.schools, intake.trust_membership, intake.amendments,
                               year, "ks4", "unvalidated").persist(StorageLevel.MEMORY_AND_DISK)
    n_cohort = pupils.count()
    pupil_seconds = time.perf_counter() - started

    spec = load_model_spec("ks4_mainstream.yaml")
    terms = [t for t in spec.term_names if t != "intercept"]
    columns = [design_column(t) for t in terms]
    started = time.perf_counter()
    design = model_design(scored_population(pupils, spec), spec)
    design = design.select(GROUP, OUTCOME, *columns).persist(StorageLevel.MEMORY_AND_DISK)
    n_model = design.count()
    design_seconds = time.perf_counter() - started

    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        stats = gather_statistics(design, OUTCOME, columns, GROUP, names=terms)
        gathered = time.perf_counter() - started
        fit = fit_statistics(stats, gather_seconds=gathered)
        timings.append((gathered, fit.fit_seconds))

    started = time.perf_counter()
    predicted = predict(design, fit.coefficients.estimate.to_dict(), spec.stage_of, spec.outcome.valid_range)
    predicted.agg(F.sum("cva_residual")).collect()
    predict_seconds = time.perf_counter() - started

    print(f"\nvalueadded CVA benchmark: year {year}, seed {seed}, scale {scale:g}")
    print(f"  cohort: generate/reuse {generate_seconds:.1f} s; intake + pupil table {pupil_seconds:.1f} s ({n_cohort:,} KS4 pupils)")
    print(f"  model {spec.name}: {fit.n_pupils:,} pupils, {fit.n_groups:,} schools, {len(spec.terms)} design columns (intercept included)")
    print(f"  design built in Spark and cached: {design_seconds:.1f} s ({n_model:,} rows)")
    for k, (gathered, fitted) in enumerate(timings, 1):
        print(f"  run {k}: gather {gathered:.2f} s + fit {fitted:.3f} s = {gathered + fitted:.2f} s")
    best = min(g + f for g, f in timings)
    print(f"  best gather + fit: {best:.2f} s; sigma2_school {fit.sigma2_school:.4f}, sigma2_pupil {fit.sigma2_pupil:.4f}, "
          f"REML criterion {fit.reml_criterion:.4f}, boundary {fit.boundary}")
    print(f"  four-stage prediction of every pupil (Spark column expressions, one product per term): {predict_seconds:.1f} s")
    figures = {"pupils": fit.n_pupils, "schools": fit.n_groups, "columns": len(spec.terms), "design_seconds": design_seconds,
               "timings": timings, "predict_seconds": predict_seconds}

    if statsmodels:
        figures["statsmodels"] = _statsmodels_comparison(design, columns, fit, best)
    jvm_peak = _jvm_peak_mib(spark)
    print(f"  peak memory: Python driver {_python_peak_mib():,.0f} MiB; Spark JVM {'n/a' if jvm_peak is None else f'{jvm_peak:,.0f} MiB'}")
    design.unpersist()
    pupils.unpersist()
    intake.release()
    return figures


def _statsmodels_comparison(design, columns: list[str], fit, ours_seconds: float) -> dict:
    """statsmodels MixedLM, REML, default optimiser and start, on the same design (driver memory)."""
    import warnings

    import numpy as np
    try:
        import statsmodels.api as sm
    except ImportError as error:  # a test dependency, not a runtime one
        raise RuntimeError("--statsmodels needs statsmodels: pip install -r requirements-dev.txt") from error
    from valueadded.cva.design import OUTCOME
    from valueadded.cva.stage import GROUP

    started = time.perf_counter()
    data = design.select(GROUP, OUTCOME, *columns).toPandas()
    collect_seconds = time.perf_counter() - started
    exog = np.column_stack([np.ones(len(data)), data[columns].to_numpy(dtype=np.float64)])
    model = sm.MixedLM(data[OUTCOME].to_numpy(dtype=np.float64), exog, groups=data[GROUP].to_numpy())
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(reml=True)
    seconds = time.perf_counter() - started
    ours = fit.coefficients.estimate.to_numpy()
    rel = float(np.max(np.abs(np.asarray(result.fe_params) - ours) / np.maximum(np.abs(ours), 1e-300)))
    sm_s2b = float(np.asarray(result.cov_re)[0, 0])
    print(f"  statsmodels MixedLM (REML, default optimiser): {seconds:.1f} s (+ {collect_seconds:.1f} s to collect the design); "
          f"converged {result.converged}; {len(caught)} warning(s)")
    print(f"    ratio statsmodels / (gather + fit): {seconds / ours_seconds:.0f}x")
    print(f"    -2 llf {-2 * result.llf:.4f} vs ours {fit.reml_criterion:.4f}; max relative coefficient difference {rel:.2e}; "
          f"sigma2_school {sm_s2b:.4f} vs {fit.sigma2_school:.4f}; sigma2_pupil {result.scale:.4f} vs {fit.sigma2_pupil:.4f}")
    return {"seconds": seconds, "converged": bool(result.converged), "minus_2_llf": float(-2 * result.llf),
            "max_rel_coefficient_difference": rel}
