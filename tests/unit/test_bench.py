"""The benchmark's CPU figures (the benchmark itself is not a test: bin/bench)."""

import re
from types import SimpleNamespace

import pytest

from valueadded import bench
from valueadded.bench import busy_cpu_seconds, cpu_line, jvm_work_seconds, last_stage_id, task_cpu_seconds
from valueadded.cli import build_parser, main


@pytest.mark.parametrize(
    "line, busy",
    [
        # user nice system idle iowait irq softirq steal guest guest_nice (ticks)
        ("cpu  100 5 50 1000 20 3 2 0 0 0", 1.60),
        ("cpu  100 5 50 1000 20 3 2 10 40 0", 1.70),  # steal is busy; guest is inside user already
        ("cpu  0 0 0 500 500 0 0", 0.0),  # idle and waiting for disk are not busy
    ],
)
def test_busy_cpu_seconds_count_every_busy_column_once(line, busy):
    assert busy_cpu_seconds(line, 100) == pytest.approx(busy)


def test_cpu_line_says_what_it_has():
    assert cpu_line(None, (1.0, 1.0), 10.0, 2) == ""
    assert cpu_line(15.0, None, 10.0, 2) == "CPU busy 15 s (1.50 of 2 cores)"
    assert cpu_line(15.0, (6.4, 0.84), 10.0, 2) == (
        "CPU busy 15 s (1.50 of 2 cores); the JVM compiling its code (JIT) 6 s, paused for garbage collection 0.8 s"
    )
    assert cpu_line(15.0, (6.4, 0.84), 10.0, 2, 7.6) == (
        "CPU busy 15 s (1.50 of 2 cores); Spark's tasks 8 s; the JVM compiling its code (JIT) 6 s, "
        "paused for garbage collection 0.8 s"
    )


def test_task_cpu_seconds_count_the_stages_run_since(spark):
    before = last_stage_id(spark)
    assert before is not None and before >= -1
    assert task_cpu_seconds(spark, before) == 0.0  # nothing run since
    spark.range(3_000_000).selectExpr("id % 7 as k", "sqrt(id) * 2 as v").groupBy("k").sum("v").collect()
    after = last_stage_id(spark)
    assert after > before
    spent = task_cpu_seconds(spark, before)
    assert spent > 0
    assert task_cpu_seconds(spark, after) == 0.0
    assert task_cpu_seconds(spark, None) is None


def test_jvm_work_seconds_of_a_local_session_grow_with_work(spark):
    before = jvm_work_seconds(spark)
    assert before is not None
    spark.range(200_000).selectExpr("id % 7 as k", "id * 2 as v").groupBy("k").sum("v").collect()
    after = jvm_work_seconds(spark)
    assert after[0] >= before[0] > 0  # a JVM that has run Spark has compiled code
    assert after[1] >= before[1] >= 0


def test_jvm_work_seconds_are_not_given_for_a_cluster():
    # The driver's own JIT and GC say nothing of a cluster's executors.
    assert jvm_work_seconds(SimpleNamespace(sparkContext=SimpleNamespace(master="yarn"))) is None


@pytest.mark.parametrize(
    "text, releases",
    [
        ("ks4", (("ks4", "unvalidated"), ("ks4", "validated"))),
        ("ks4:validated,ks2:unvalidated", (("ks4", "validated"), ("ks2", "unvalidated"))),  # in the order given
        (" ks2:validated , ", (("ks2", "validated"),)),
        ("ks2,ks4", bench.DEFAULT_RELEASES),
    ],
)
def test_the_benchmark_runs_the_releases_listed_in_their_order(text, releases):
    assert bench.parse_releases(text) == releases


@pytest.mark.parametrize(
    "text, message",
    [
        ("ks3", "release 'ks3': expected KEY_STAGE or KEY_STAGE:DATA_STAGE"),
        ("ks2:checked", "release 'ks2:checked'"),
        ("ks2,ks2:validated", "release ks2:validated is listed twice"),
        (",", "no release to run"),
    ],
)
def test_a_release_list_the_benchmark_cannot_run_is_refused_with_the_reason(text, message, capsys):
    with pytest.raises(ValueError, match=re.escape(message)):
        bench.parse_releases(text)
    with pytest.raises(SystemExit) as exit_:  # the command line: argparse's usage error, exit 2
        build_parser().parse_args(["bench", "--releases", text])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--cva", "--releases", "ks4"], "--cva runs the CVA engine alone"),
        (["bench", "--statsmodels"], "--statsmodels times statsmodels beside the CVA engine: it needs --cva"),
    ],
)
def test_options_of_the_other_benchmark_are_refused_not_ignored(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
