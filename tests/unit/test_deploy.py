"""The deployment files in deploy/: the Databricks asset bundle, the Airflow DAG and the
spark-submit wrapper point at the real entry point, configuration and command line.

No Spark, Airflow or Databricks here: the bundle is read with PyYAML, the DAG with `ast`
(its plain-Python functions are compiled without its Airflow imports, with stand-ins for
the two Airflow exceptions), and the wrapper is run with a fake `spark-submit` that
records what it was given.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from valueadded import cli
from valueadded.io.pseudonym import DEFAULT_KEY_VARIABLE
from valueadded.spark import JIT_OPTIONS, LOCAL_JVM_SETTINGS

REPO = Path(__file__).resolve().parents[2]
BUNDLE_DIR = REPO / "deploy" / "databricks"
DAG_FILE = REPO / "deploy" / "airflow" / "valueadded_release.py"
WRAPPER = REPO / "deploy" / "spark-submit.sh"
ENTRY_POINT = REPO / "jobs" / "release.py"
RELEASE_CONFIG = REPO / "conf" / "releases" / "default.yaml"

# Stand-ins for what Databricks supplies at deploy or run time.
SAMPLE_YEAR = 2024
SAMPLE_VARIABLES = {
    "input_root": "/Volumes/statistics/valueadded/files/input",
    "output_root": "/Volumes/statistics/valueadded/files/output",
    "node_type_id": "i3.xlarge",
}
VARIABLE_REFERENCE = re.compile(r"\$\{var\.(\w+)\}")
JOB_PARAMETER_REFERENCE = re.compile(r"\{\{job\.parameters\.(\w+)\}\}")
SECRET_REFERENCE = re.compile(r"\{\{secrets/([\w.-]+)/([\w.-]+)\}\}")


def release_choices(option: str) -> tuple[str, ...]:
    """The single values (not `both`) that `valueadded release OPTION` accepts."""
    subcommands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in subcommands.choices["release"]._actions if option in a.option_strings)
    return tuple(choice for choice in action.choices if choice != "both")


KEY_STAGES = release_choices("--key-stage")
DATA_STAGES = release_choices("--stage")


def parse_release(arguments: list[str]) -> argparse.Namespace:
    """Parse release options with the real command line; argparse exits 2 on a bad one."""
    return cli.build_parser().parse_args(["release", *arguments])


# --- the Databricks asset bundle -------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> dict:
    """databricks.yml with its included resource files; each job remembers its file."""
    root = yaml.safe_load((BUNDLE_DIR / "databricks.yml").read_text())
    root["jobs"] = {}
    for pattern in root["include"]:
        for path in sorted(BUNDLE_DIR.glob(pattern)):
            for name, job in yaml.safe_load(path.read_text())["resources"]["jobs"].items():
                assert name not in root["jobs"], f"job {name} defined twice"
                root["jobs"][name] = {**job, "_file": path}
    return root


def sync_root(bundle: dict) -> Path:
    """The folder uploaded as ${workspace.file_path}: the common parent of the sync paths."""
    paths = [(BUNDLE_DIR / p).resolve() for p in bundle["sync"]["paths"]]
    return Path(os.path.commonpath(paths))


def variable_values(bundle: dict) -> dict[str, str]:
    values = {}
    for name, spec in bundle["variables"].items():
        if "default" in spec:
            values[name] = str(spec["default"])
        else:
            values[name] = SAMPLE_VARIABLES[name]
    return values


def resolve(text: str, bundle: dict, job_parameters: dict[str, str]) -> str:
    """Substitute bundle variables, ${workspace.file_path} and job parameter references."""
    text = text.replace("${workspace.file_path}", str(sync_root(bundle)))
    text = VARIABLE_REFERENCE.sub(lambda m: variable_values(bundle)[m.group(1)], text)
    text = text.replace("{{job.start_time.year}}", str(SAMPLE_YEAR))
    return JOB_PARAMETER_REFERENCE.sub(lambda m: job_parameters[m.group(1)], text)


def job_arguments(bundle: dict, job: dict) -> list[str]:
    """The release task's parameters as they reach jobs/release.py on a run with the defaults."""
    defaults = {p["name"]: resolve(str(p["default"]), bundle, {}) for p in job["parameters"]}
    (task,) = job["tasks"]
    return [resolve(str(argument), bundle, defaults) for argument in task["spark_python_task"]["parameters"]]


def test_bundle_syncs_from_the_repository_root(bundle):
    assert sync_root(bundle) == REPO
    for path in bundle["sync"]["paths"]:
        assert (BUNDLE_DIR / path).resolve().is_dir(), path


def test_bundle_has_one_job_per_key_stage_and_data_stage(bundle):
    combinations = []
    for name, job in bundle["jobs"].items():
        arguments = parse_release(job_arguments(bundle, job))
        combinations.append((arguments.key_stage, arguments.stage))
        assert name == job["name"] == f"valueadded_{arguments.key_stage}_{arguments.stage}"
    assert sorted(combinations) == sorted((k, s) for k in KEY_STAGES for s in DATA_STAGES)


def test_every_job_runs_the_release_entry_point_from_the_uploaded_files(bundle):
    synced = [(BUNDLE_DIR / p).resolve() for p in bundle["sync"]["paths"]]
    for name, job in bundle["jobs"].items():
        (task,) = job["tasks"]
        python_file = (job["_file"].parent / task["spark_python_task"]["python_file"]).resolve()
        assert python_file == ENTRY_POINT, name
        assert python_file.is_file()
        assert any(folder in python_file.parents for folder in synced), f"{name}: {python_file} is not uploaded"
        assert task["job_cluster_key"] in {cluster["job_cluster_key"] for cluster in job["job_clusters"]}


def test_every_job_passes_options_the_release_command_accepts(bundle):
    for name, job in bundle["jobs"].items():
        arguments = job_arguments(bundle, job)
        assert not any("${" in a or "{{" in a for a in arguments), f"{name}: unresolved reference in {arguments}"
        for option in ("--year", "--key-stage", "--stage", "--input", "--output", "--config"):
            assert arguments.count(option) == 1, f"{name}: {option}"
        parsed = parse_release(arguments)
        assert parsed.year == SAMPLE_YEAR
        assert parsed.input == f"{SAMPLE_VARIABLES['input_root']}/{SAMPLE_YEAR}"
        assert parsed.output == SAMPLE_VARIABLES["output_root"]
        assert Path(parsed.config) == RELEASE_CONFIG
        assert RELEASE_CONFIG.is_file()


def test_bundle_references_only_declared_variables(bundle):
    files = [BUNDLE_DIR / "databricks.yml", *(path for pattern in bundle["include"] for path in BUNDLE_DIR.glob(pattern))]
    text = "\n".join(path.read_text() for path in files)
    used = set(VARIABLE_REFERENCE.findall(text))
    assert used <= set(bundle["variables"]), used - set(bundle["variables"])
    required = {name for name, spec in bundle["variables"].items() if "default" not in spec}
    assert required == set(SAMPLE_VARIABLES)


def test_every_job_cluster_takes_the_pseudonym_key_from_a_secret_scope(bundle):
    """The key reaches the release as the environment variable it reads by default, from a
    Databricks secret reference, and never as a job parameter or an option."""
    for name, job in bundle["jobs"].items():
        for cluster in job["job_clusters"]:
            variables = cluster["new_cluster"]["spark_env_vars"]
            reference = resolve(variables[DEFAULT_KEY_VARIABLE], bundle, {})
            assert SECRET_REFERENCE.fullmatch(reference), f"{name}: {reference}"
            assert SECRET_REFERENCE.fullmatch(reference).groups() == ("valueadded", "pseudonym_key")
        arguments = job_arguments(bundle, job)
        assert parse_release(arguments).pseudonym_key_env == DEFAULT_KEY_VARIABLE, name
        assert not any("secrets/" in str(p.get("default", "")) for p in job["parameters"]), name


def test_bundle_installs_the_pinned_versions_of_its_libraries(bundle):
    pins = dict(
        line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for name, job in bundle["jobs"].items():
        (task,) = job["tasks"]
        for library in task["libraries"]:
            package, version = library["pypi"]["package"].split("==")
            assert pins.get(package) == version, f"{name}: {package}=={version}, requirements.txt has {pins.get(package)}"


# --- the Airflow DAG -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dag_tree() -> ast.Module:
    return ast.parse(DAG_FILE.read_text(), filename=str(DAG_FILE))


def module_constant(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{DAG_FILE.name} defines no {name}")


class FakeAirflowException(Exception):
    """Stands in for airflow.exceptions.AirflowException (retried)."""


class FakeAirflowFailException(FakeAirflowException):
    """Stands in for airflow.exceptions.AirflowFailException (failed without retries)."""


@pytest.fixture(scope="module")
def dag_functions(dag_tree) -> dict:
    """The DAG file's constants and functions, compiled without its imports and DAGs.

    They are plain Python; the two Airflow exceptions they raise are stand-ins here.
    """
    body = [node for node in dag_tree.body if isinstance(node, (ast.Assign, ast.FunctionDef))]
    namespace = {
        "__name__": "valueadded_release", "json": json, "logging": logging, "shlex": shlex,
        "subprocess": subprocess, "deque": deque, "datetime": datetime, "timedelta": timedelta,
        "timezone": timezone, "Path": Path,
        "AirflowException": FakeAirflowException, "AirflowFailException": FakeAirflowFailException,
    }
    exec(compile(ast.Module(body=body, type_ignores=[]), str(DAG_FILE), "exec"), namespace)  # noqa: S102
    return namespace


def test_dag_tasks_are_the_bundle_jobs(dag_tree, bundle):
    release_jobs = module_constant(dag_tree, "RELEASE_JOBS")
    assert set(release_jobs) == set(bundle["jobs"])
    for name, (key_stage, data_stage) in release_jobs.items():
        arguments = parse_release(job_arguments(bundle, bundle["jobs"][name]))
        assert (arguments.key_stage, arguments.stage) == (key_stage, data_stage), name


def quartz_to_cron(expression: str) -> str:
    seconds, minute, hour, day, month, weekday = expression.split()
    assert seconds == "0"
    return " ".join([minute, hour, day, month, "*" if weekday == "?" else weekday])


def test_dag_schedules_are_the_bundle_schedules(dag_tree, bundle):
    schedules = module_constant(dag_tree, "SCHEDULES")
    assert set(schedules) == set(DATA_STAGES)
    release_jobs = module_constant(dag_tree, "RELEASE_JOBS")
    for name, job in bundle["jobs"].items():
        assert quartz_to_cron(job["schedule"]["quartz_cron_expression"]) == schedules[release_jobs[name][1]], name


def test_dag_exit_codes_are_the_command_lines(dag_functions):
    assert dag_functions["EXIT_OK"] == cli.EXIT_OK
    assert dag_functions["EXIT_INTERNAL"] == cli.EXIT_INTERNAL
    assert dag_functions["EXIT_BAD_INPUT"] == cli.EXIT_BAD_INPUT
    assert dag_functions["EXIT_THRESHOLD"] == cli.EXIT_THRESHOLD
    assert dag_functions["EXIT_BUSY"] == cli.EXIT_BUSY


@pytest.mark.parametrize(
    ("code", "retry"),
    [(cli.EXIT_OK, None), (cli.EXIT_BAD_INPUT, False), (cli.EXIT_THRESHOLD, False), (cli.EXIT_INTERNAL, True), (cli.EXIT_BUSY, True), (137, True), (-9, True)],
)
def test_dag_retries_only_internal_failures(dag_functions, code, retry):
    failure = dag_functions["failure_for_exit_code"](code)
    if retry is None:
        assert failure is None
    else:
        assert failure[0] is retry


FAKE_WRAPPER = """#!/usr/bin/env bash
# Stands in for deploy/spark-submit.sh: prints its arguments, then exits as told.
echo "release options: $*"
echo "last line before exit $FAKE_EXIT"
exit "$FAKE_EXIT"
"""


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        (cli.EXIT_OK, None),
        (cli.EXIT_INTERNAL, FakeAirflowException),
        (cli.EXIT_BAD_INPUT, FakeAirflowFailException),
        (cli.EXIT_THRESHOLD, FakeAirflowFailException),
        (137, FakeAirflowException),
    ],
)
def test_dag_task_fails_with_or_without_retries_by_exit_code(dag_functions, tmp_path, monkeypatch, code, raised):
    wrapper = tmp_path / "deploy" / "spark-submit.sh"
    wrapper.parent.mkdir()
    wrapper.write_text(FAKE_WRAPPER)
    wrapper.chmod(0o755)
    monkeypatch.setenv("FAKE_EXIT", str(code))
    settings = json.dumps({"home": str(tmp_path), "input_root": "/in", "output_root": "/out"})
    run = lambda: dag_functions["run_release"]("ks2", "validated", settings, params={"year": 2024})  # noqa: E731
    if raised is None:
        assert run() is None
        return
    with pytest.raises(FakeAirflowException) as failure:
        run()
    assert type(failure.value) is raised
    assert f"exit code {code}" in str(failure.value)
    assert f"last line before exit {code}" in str(failure.value)


def test_dag_task_refuses_missing_settings_without_retries(dag_functions):
    with pytest.raises(FakeAirflowFailException, match="missing"):
        dag_functions["run_release"]("ks2", "validated", "", params={"year": 2024})
    with pytest.raises(FakeAirflowFailException, match="lacks"):
        dag_functions["run_release"]("ks2", "validated", json.dumps({"home": "/opt"}), params={"year": 2024})


def test_dag_command_runs_the_wrapper_with_release_options(dag_functions):
    settings = {"home": str(REPO), "input_root": "/shared/in", "output_root": "/shared/out", "spark_submit_args": ["--master", "yarn"]}
    command = dag_functions["release_command"](settings, "ks4", "validated", 2024)
    assert Path(command[0]) == WRAPPER and WRAPPER.is_file()
    separator = command.index("--")
    assert command[1:separator] == ["--master", "yarn"]
    parsed = parse_release(command[separator + 1:])
    assert (parsed.year, parsed.key_stage, parsed.stage) == (2024, "ks4", "validated")
    assert (parsed.input, parsed.output) == ("/shared/in/2024", "/shared/out")
    assert Path(parsed.config) == RELEASE_CONFIG


@pytest.mark.parametrize(
    ("moment", "year"),
    [(datetime(2024, 10, 1), 2024), (datetime(2024, 12, 1), 2024), (datetime(2025, 2, 3), 2024), (datetime(2025, 9, 1), 2025)],
)
def test_dag_default_year_is_the_academic_year_before_the_run(dag_functions, moment, year):
    assert dag_functions["academic_year"](moment) == year


# --- the spark-submit wrapper ----------------------------------------------------------

FAKE_SPARK_SUBMIT = """#!/usr/bin/env bash
# Records its arguments (NUL-separated) and three environment variables, then exits as told.
printf '%s\\0' "$@" > "$FAKE_RECORD/arguments"
printf '%s\\0' "${VALUEADDED_SPARK_MASTER:-}" "${PYSPARK_PYTHON:-}" "${VALUEADDED_PSEUDONYM_KEY:-}" > "$FAKE_RECORD/environment"
exit "${FAKE_EXIT:-0}"
"""
# Stands in for the secret a scheduler puts in the wrapper's environment.
FAKE_PSEUDONYM_KEY = "fake-secret-from-the-secret-store"
RELEASE_ARGUMENTS = ["--year", "2024", "--key-stage", "ks2", "--stage", "validated",
                     "--input", "/shared/value added/input/2024", "--output", "/shared/output"]


@pytest.fixture
def fake_spark(tmp_path):
    """Run the wrapper with a fake spark-submit first on PATH; returns (run, record folder)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    fake = bin_dir / "spark-submit"
    fake.write_text(FAKE_SPARK_SUBMIT)
    fake.chmod(0o755)
    environment = {
        key: value for key, value in os.environ.items()
        if key not in {"SPARK_SUBMIT", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VALUEADDED_SPARK_MASTER"}
    }
    environment.update({
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_RECORD": str(record),
        "VALUEADDED_BUILD_DIR": str(tmp_path / "build"),
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        DEFAULT_KEY_VARIABLE: FAKE_PSEUDONYM_KEY,
    })

    def run(arguments: list[str], exit_code: int = 0) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(WRAPPER), *arguments], env={**environment, "FAKE_EXIT": str(exit_code)},
            capture_output=True, text=True, timeout=60, check=False,
        )

    return run, record


def recorded(record: Path, name: str) -> list[str]:
    return (record / name).read_text().split("\0")[:-1]


HEAP_SETTINGS = ("spark.driver.memory", "spark.driver.extraJavaOptions", "spark.memory.fraction")


def heap_settings(spark_options: list[str]) -> dict[str, str]:
    """The driver heap's settings among spark-submit options (--driver-memory, --conf)."""
    settings = {}
    for option, value in zip(spark_options, spark_options[1:]):
        if option == "--conf":
            key, _, setting = value.partition("=")
            settings[key] = setting
        elif option == "--driver-memory":
            settings["spark.driver.memory"] = value
    return {key: value for key, value in settings.items() if key in HEAP_SETTINGS}


def test_wrapper_is_valid_bash():
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True, timeout=30)


def test_wrapper_passes_release_options_to_the_entry_point_unchanged(fake_spark):
    run, record = fake_spark
    result = run(RELEASE_ARGUMENTS)
    assert result.returncode == 0, result.stderr
    arguments = recorded(record, "arguments")
    script = arguments.index(str(ENTRY_POINT))
    assert arguments[script + 1:] == RELEASE_ARGUMENTS
    parse_release(arguments[script + 1:])
    spark_options = arguments[:script]
    assert spark_options[spark_options.index("--master") + 1] == "local[2]"
    # The JVM spark-submit starts is laid out as get_spark lays out a local session it starts.
    assert heap_settings(spark_options) == {key: LOCAL_JVM_SETTINGS[key] for key in HEAP_SETTINGS}
    # The key reaches spark-submit (and so the driver) in the environment, never as an argument.
    assert recorded(record, "environment") == ["local[2]", sys.executable, FAKE_PSEUDONYM_KEY]
    assert not any(FAKE_PSEUDONYM_KEY in argument for argument in arguments)
    assert FAKE_PSEUDONYM_KEY not in result.stdout + result.stderr
    package = Path(spark_options[spark_options.index("--py-files") + 1])
    with zipfile.ZipFile(package) as archive:
        assert "valueadded/cli.py" in archive.namelist()
        assert not any("__pycache__" in name for name in archive.namelist())


@pytest.mark.parametrize(
    ("spark_arguments", "expected"),
    [
        # A heap you size yourself gets the collector, not this heap's layout.
        (["--driver-memory", "4g"], {"spark.driver.memory": "4g", "spark.driver.extraJavaOptions": f"{JIT_OPTIONS} -XX:+UseParallelGC"}),
        (["--master", "local[4]"], {"spark.driver.memory": "6g"}),
        (["--master", "yarn", "--driver-memory", "8g"], {"spark.driver.memory": "8g"}),
    ],
)
def test_wrapper_lays_out_the_local_heap_only_for_the_default_master_and_memory(fake_spark, spark_arguments, expected):
    run, record = fake_spark
    result = run([*spark_arguments, "--", *RELEASE_ARGUMENTS])
    assert result.returncode == 0, result.stderr
    arguments = recorded(record, "arguments")
    assert heap_settings(arguments[:arguments.index(str(ENTRY_POINT))]) == expected


def test_wrapper_passes_spark_options_before_the_separator_to_spark_submit(fake_spark, tmp_path):
    run, record = fake_spark
    extra = tmp_path / "extra.py"
    extra.write_text("")
    result = run(["--master", "yarn", "--num-executors", "4", "--py-files", str(extra), "--", *RELEASE_ARGUMENTS])
    assert result.returncode == 0, result.stderr
    arguments = recorded(record, "arguments")
    script = arguments.index(str(ENTRY_POINT))
    spark_options = arguments[:script]
    assert arguments[script + 1:] == RELEASE_ARGUMENTS
    assert spark_options.count("--master") == 1 and spark_options[spark_options.index("--master") + 1] == "yarn"
    assert spark_options[spark_options.index("--num-executors") + 1] == "4"
    assert spark_options.count("--py-files") == 1
    assert spark_options[spark_options.index("--py-files") + 1].endswith(f"valueadded-lib.zip,{extra}")
    # On a cluster the executors' Python is the caller's choice, not this machine's.
    assert recorded(record, "environment") == ["yarn", "", FAKE_PSEUDONYM_KEY]


@pytest.mark.parametrize("code", [cli.EXIT_OK, cli.EXIT_INTERNAL, cli.EXIT_BAD_INPUT, cli.EXIT_THRESHOLD])
def test_wrapper_exits_with_the_release_exit_code(fake_spark, code):
    run, _ = fake_spark
    assert run(RELEASE_ARGUMENTS, exit_code=code).returncode == code


def test_wrapper_refuses_cluster_deploy_mode(fake_spark):
    run, record = fake_spark
    result = run(["--deploy-mode", "cluster", "--", *RELEASE_ARGUMENTS])
    assert result.returncode == cli.EXIT_BAD_INPUT
    assert "client mode" in result.stderr
    assert not (record / "arguments").exists()


def test_entry_point_hands_its_arguments_to_the_release_command():
    """jobs/release.py parses its arguments as `valueadded release` (no Spark: argparse stops first)."""
    shown = subprocess.run([sys.executable, str(ENTRY_POINT), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "usage: valueadded release" in shown.stdout and "--key-stage" in shown.stdout
    refused = subprocess.run([sys.executable, str(ENTRY_POINT), "--key-stage", "ks5"], capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == cli.EXIT_BAD_INPUT
    assert "--key-stage" in refused.stderr
