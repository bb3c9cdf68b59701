"""Airflow DAGs for the national value-added releases, run with deploy/spark-submit.sh.

Two DAGs, one per data stage, each with one task per key stage (ks2, ks4):

- ``valueadded_release_unvalidated``: 06:00 UTC on 1 October (early autumn), on the
  unvalidated results.
- ``valueadded_release_validated``: 06:00 UTC on 1 December, after the checking
  exercise, on the results with its amendments applied.

The task ids are the job names of the Databricks asset bundle (deploy/databricks) and the
tasks pass the same release options, so a release has one name on either platform.

Why spark-submit and not DatabricksRunNowOperator: the release's exit code says what kind
of failure it was, and spark-submit in client mode exits with the driver's code, so the
task can refuse to retry a failure that would only repeat. A Databricks run reports only
that it failed. On Databricks, use the bundle's own schedules (deploy/README.md).

Exit codes (valueadded.cli) and what the task does:

- 0: the release succeeded.
- 2 (bad input or configuration) and 3 (validation threshold exceeded): the task fails at
  once (AirflowFailException), whatever retries are left: a re-run reads the same inputs
  and fails the same way. Fix the input or configuration, or look at rejected_rows, then
  clear the task.
- 1 (internal error) and any other code (a killed JVM, a lost cluster): AirflowException,
  so Airflow retries (RETRIES times, RETRY_DELAY apart). A run replaces only its own
  (year, key stage, data stage) partition, so a retry is safe.

Settings: the Airflow Variable ``valueadded`` (JSON), read when a task runs::

    {"home": "/opt/valueadded",
     "input_root": "/shared/valueadded/input",
     "output_root": "/shared/valueadded/output",
     "spark_submit_args": ["--master", "yarn", "--num-executors", "4"]}

``home`` is the checkout on the Airflow worker (with .venv from bin/setup-env); a year's
inputs are read from ``<input_root>/<year>``; ``spark_submit_args`` (optional) go to
spark-submit. The DAG param ``year`` (academic year of the results, 2024 = 2023/24)
defaults to the academic year that ended before the run: runs from September 2024 to
August 2025 release 2024. Give it explicitly for a manual run.

The pupil pseudonym key is not a setting: the release reads it from
``VALUEADDED_PSEUDONYM_KEY`` in the worker's environment (filled from the secret store,
deploy/README.md), which the task passes on to the wrapper unchanged.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.exceptions import AirflowException, AirflowFailException

try:  # Airflow 3
    from airflow.sdk import DAG, Param, task
except ImportError:  # Airflow 2.4 to 2.11
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.param import Param

log = logging.getLogger(__name__)

# The exit codes of valueadded.cli (tests/unit/test_deploy.py checks that they match).
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_THRESHOLD, EXIT_BUSY = 0, 1, 2, 3, 4
# Failures that a retry would only repeat.
NO_RETRY_EXIT_CODES = {
    EXIT_BAD_INPUT: "bad input or configuration",
    EXIT_THRESHOLD: "validation threshold exceeded (too many rejected rows)",
}

# Cron (UTC) of each data stage's DAG; move them when the year's delivery dates are known.
SCHEDULES = {
    "unvalidated": "0 6 1 10 *",
    "validated": "0 6 1 12 *",
}
# Task id, the same as the Databricks bundle's job name -> (key stage, data stage).
RELEASE_JOBS = {
    "valueadded_ks2_unvalidated": ("ks2", "unvalidated"),
    "valueadded_ks4_unvalidated": ("ks4", "unvalidated"),
    "valueadded_ks2_validated": ("ks2", "validated"),
    "valueadded_ks4_validated": ("ks4", "validated"),
}
WRAPPER = "deploy/spark-submit.sh"  # relative to the checkout
RELEASE_CONFIG = "conf/releases/default.yaml"  # relative to the checkout
SETTINGS_VARIABLE = "valueadded"
REQUIRED_SETTINGS = ("home", "input_root", "output_root")
RETRIES = 2
RETRY_DELAY = timedelta(minutes=20)
EXECUTION_TIMEOUT = timedelta(hours=6)
# Lines of the release's output quoted in the failure message (the whole is in the log).
FAILURE_TAIL_LINES = 30
# Seconds a stopped task gives spark-submit to shut down before killing it.
STOP_GRACE_SECONDS = 60


def academic_year(moment: datetime) -> int:
    """The academic year a run at `moment` releases: the one whose results came in the
    summer before (September 2024 to August 2025 -> 2024, i.e. 2023/24)."""
    return moment.year if moment.month >= 9 else moment.year - 1


def release_command(settings: dict, key_stage: str, data_stage: str, year: int) -> list[str]:
    """`deploy/spark-submit.sh [spark-submit options] -- release options` for one release."""
    home = Path(settings["home"])
    return [
        str(home / WRAPPER),
        *settings.get("spark_submit_args", []),
        "--",
        "--year", str(year),
        "--key-stage", key_stage,
        "--stage", data_stage,
        "--input", f"{settings['input_root']}/{year}",
        "--output", settings["output_root"],
        "--config", str(home / RELEASE_CONFIG),
    ]


def failure_for_exit_code(code: int) -> tuple[bool, str] | None:
    """None when the release succeeded; else (whether to retry, what failed)."""
    if code == EXIT_OK:
        return None
    if code in NO_RETRY_EXIT_CODES:
        return False, NO_RETRY_EXIT_CODES[code]
    if code == EXIT_INTERNAL:
        return True, "internal error (the traceback is in the log)"
    if code == EXIT_BUSY:
        return True, "another run is releasing the same partition (retried after the delay)"
    return True, "spark-submit or the driver stopped abnormally"


def read_settings(raw: str) -> dict:
    """The settings Variable, checked; a bad one fails the task without retries."""
    if not raw.strip():
        raise AirflowFailException(f"Airflow Variable {SETTINGS_VARIABLE!r} is missing (deploy/README.md, Airflow)")
    try:
        settings = json.loads(raw)
    except json.JSONDecodeError as error:
        raise AirflowFailException(f"Airflow Variable {SETTINGS_VARIABLE!r} is not JSON: {error}") from error
    if not isinstance(settings, dict):
        raise AirflowFailException(f"Airflow Variable {SETTINGS_VARIABLE!r} must be a JSON object")
    missing = [key for key in REQUIRED_SETTINGS if not settings.get(key)]
    if missing:
        raise AirflowFailException(f"Airflow Variable {SETTINGS_VARIABLE!r} lacks {missing}")
    extra = settings.get("spark_submit_args", [])
    if not isinstance(extra, list) or not all(isinstance(arg, str) for arg in extra):
        raise AirflowFailException(f"Airflow Variable {SETTINGS_VARIABLE!r}: spark_submit_args must be a list of strings")
    return settings


def run_logged(command: list[str]) -> tuple[int, list[str]]:
    """Run `command`, copying its output to the task log; return its exit code and last lines."""
    tail: deque[str] = deque(maxlen=FAILURE_TAIL_LINES)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1,
    ) as process:
        try:
            for line in process.stdout:
                log.info("%s", line.rstrip("\n"))
                tail.append(line.rstrip("\n"))
            return process.wait(), list(tail)
        except BaseException:
            # The task is being stopped (timeout, marked failed): stop the release with it.
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
            raise


def run_release(key_stage: str, data_stage: str, settings_json: str, **context) -> None:
    """Run one release with deploy/spark-submit.sh; fail the task according to its exit code."""
    settings = read_settings(settings_json)
    year = context["params"].get("year") or academic_year(context.get("data_interval_end") or datetime.now(timezone.utc))
    command = release_command(settings, key_stage, data_stage, int(year))
    log.info("running %s", shlex.join(command))
    try:
        code, tail = run_logged(command)
    except OSError as error:  # the wrapper is missing or not executable: a deployment fault
        raise AirflowFailException(f"cannot run {command[0]}: {error}") from error
    failure = failure_for_exit_code(code)
    if failure is None:
        log.info("%s %s %s released", year, key_stage, data_stage)
        return
    retry, what = failure
    message = f"{year} {key_stage} {data_stage}: exit code {code}, {what}. Last output:\n" + "\n".join(tail)
    if retry:
        raise AirflowException(message)
    raise AirflowFailException(message)


for dag_stage, dag_schedule in SCHEDULES.items():
    with DAG(
        dag_id=f"valueadded_release_{dag_stage}",
        description=f"National value-added releases on the {dag_stage} data (ks2 and ks4)",
        schedule=dag_schedule,
        start_date=datetime(2024, 9, 1, tzinfo=timezone.utc),
        catchup=False,
        # Unpause deliberately: an unpaused DAG may start its latest missed run at once.
        is_paused_upon_creation=True,
        max_active_runs=1,
        params={
            "year": Param(
                None,
                type=["null", "integer"],
                description="Academic year of the results (2024 = 2023/24); empty: the one before the run date.",
            ),
        },
        default_args={"retries": RETRIES, "retry_delay": RETRY_DELAY, "execution_timeout": EXECUTION_TIMEOUT},
        doc_md=__doc__,
        tags=["valueadded", dag_stage],
    ):
        for job_name, (job_key_stage, job_stage) in RELEASE_JOBS.items():
            if job_stage == dag_stage:
                task(task_id=job_name)(run_release)(
                    key_stage=job_key_stage,
                    data_stage=job_stage,
                    # An empty string when the Variable is missing, so read_settings says so.
                    settings_json="{{ var.value.get('" + SETTINGS_VARIABLE + "', '') }}",
                )
