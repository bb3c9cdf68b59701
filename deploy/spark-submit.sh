#!/usr/bin/env bash
# Run one release (jobs/release.py) under spark-submit, from this checkout.
#
# Usage:
#   deploy/spark-submit.sh [SPARK-SUBMIT OPTIONS --] RELEASE OPTIONS
#
#   deploy/spark-submit.sh --year 2024 --key-stage ks2 --stage unvalidated \
#       --input /shared/valueadded/input/2024 --output /shared/valueadded/output
#   deploy/spark-submit.sh --master yarn --num-executors 8 -- --year 2024 --key-stage ks4 \
#       --stage validated --input /shared/valueadded/input/2024 --output /shared/valueadded/output \
#       --config /opt/valueadded/conf/releases/default.yaml
#
# RELEASE OPTIONS are those of `valueadded release` (README, "Running a release") and go to
# jobs/release.py unchanged. Options before `--` go to spark-submit; without `--` every
# argument is a release option. --input and --output are filesystem paths that the driver
# and the executors both see (a shared mount, e.g. NFS or a Databricks volume): the
# engine reads and writes them with Python file APIs, so s3a:// or abfss:// URLs do not work.
#
# The exit code is the release's, because spark-submit runs the driver here (client
# mode) and exits with its code: 0 ok, 1 internal error, 2 bad input or configuration,
# 3 validation threshold exceeded. This script's own usage errors (cluster deploy mode,
# no spark-submit found) also exit 2. Cluster deploy mode is refused: spark-submit would
# then exit 1 for every failure, and the driver would not run from this checkout.
#
# What it sets, so a plain run works on this machine and a cluster run only needs options:
# - --master local[2] unless given, with the parallel garbage collector; VALUEADDED_SPARK_MASTER
#   is set to the same master, because valueadded.spark.get_spark builds the session with
#   that setting.
# - the driver's memory unless given: with the default master, a 10 GiB heap laid out as
#   valueadded.spark lays out a local session's (-Xms10g -Xmn3g, spark.memory.fraction
#   0.35: in local mode the executors live in the driver); with a master you give, 6g.
# - the driver's Python: PYSPARK_DRIVER_PYTHON, default .venv/bin/python of this
#   checkout (bin/setup-env creates it). In local mode the executors use the same one;
#   on a cluster set PYSPARK_PYTHON to an interpreter on the executors that has the
#   pinned requirements.txt (a cluster image, or a packed virtualenv passed with
#   --archives venv.tar.gz#environment and PYSPARK_PYTHON=./environment/bin/python).
# - --py-files with lib/valueadded zipped, so the executors run the same code as the
#   driver (files you pass with --py-files are added to it). The zip is written to
#   VALUEADDED_BUILD_DIR (default build/ of this checkout).
# - spark-submit: SPARK_SUBMIT if set, else spark-submit on PATH, else the one that
#   pyspark installed in .venv/bin.
# - nothing for the pupil pseudonym key: the release reads it from VALUEADDED_PSEUDONYM_KEY
#   (or the variable --pseudonym-key-env names), which must be set in this script's
#   environment from the platform's secret store. spark-submit runs the driver here, so the
#   variable reaches it as it is; the executors receive the key inside their tasks. The
#   script never prints it or puts it on a command line. Without it the release exits 2.
# Delta Lake: with the Delta JARs (--packages io.delta:delta-spark_2.13:4.0.0) and
# --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
# --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog
# the tables are written natively by Spark; otherwise by delta-rs on the driver.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXIT_BAD_INPUT=2

spark_args=()
release_args=("$@")
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--" ]; then
    spark_args=("${@:1:i-1}")
    release_args=("${@:i+1}")
    break
  fi
done

# Read the spark-submit options this script acts on; --py-files is taken out and merged
# with the package zip below (spark-submit keeps only the last --py-files).
master="" deploy_mode="client" driver_memory_given=false extra_py_files=""
other_spark_args=()
for ((i = 0; i < ${#spark_args[@]}; i++)); do
  option="${spark_args[i]}" value="${spark_args[i+1]:-}"
  case "$option" in
    --py-files) extra_py_files=",$value"; i=$((i + 1)); continue ;;
    --py-files=*) extra_py_files=",${option#--py-files=}"; continue ;;
    --master) master="$value" ;;
    --master=*) master="${option#--master=}" ;;
    spark.master=*) master="${option#spark.master=}" ;;
    --deploy-mode) deploy_mode="$value" ;;
    --deploy-mode=*) deploy_mode="${option#--deploy-mode=}" ;;
    spark.submit.deployMode=*) deploy_mode="${option#spark.submit.deployMode=}" ;;
    --driver-memory | --driver-memory=* | spark.driver.memory=*) driver_memory_given=true ;;
  esac
  other_spark_args+=("$option")
done
if [ "$deploy_mode" != "client" ]; then
  echo "deploy/spark-submit.sh: deploy mode '$deploy_mode' is not supported: use client mode" \
    "(the default), so that the release's exit code and this checkout's conf/ reach the driver" >&2
  exit "$EXIT_BAD_INPUT"
fi
defaults=()
if [ -z "$master" ]; then
  master="local[2]"
  # The JIT limit and the throughput collector (valueadded.spark: JIT_OPTIONS, 8-12%
  # faster with the collector), and with no --driver-memory given the heap
  # valueadded.spark gives a local session it starts (LOCAL_JVM_SETTINGS: room for the
  # collector beyond the release's checkpoints).
  java_options="-XX:MaxNodeLimit=20000 -XX:+UseParallelGC"
  if [ "$driver_memory_given" = false ]; then
    java_options="$java_options -Xms10g -Xmn3g"
    defaults+=(--driver-memory 10g --conf spark.memory.fraction=0.35)
  fi
  defaults+=(--master "$master" --conf "spark.driver.extraJavaOptions=$java_options")
elif [ "$driver_memory_given" = false ]; then
  defaults+=(--driver-memory 6g)
fi
export VALUEADDED_SPARK_MASTER="$master"

if [ -z "${PYSPARK_DRIVER_PYTHON:-}" ] && [ -x "$repo/.venv/bin/python" ]; then
  export PYSPARK_DRIVER_PYTHON="$repo/.venv/bin/python"
fi
python="${PYSPARK_DRIVER_PYTHON:-python3}"
if [[ "$master" == local* ]] && [ -z "${PYSPARK_PYTHON:-}" ]; then
  export PYSPARK_PYTHON="$python"
fi

if [ -n "${SPARK_SUBMIT:-}" ]; then
  spark_submit="$SPARK_SUBMIT"
elif command -v spark-submit >/dev/null 2>&1; then
  spark_submit="spark-submit"
elif [ -x "$repo/.venv/bin/spark-submit" ]; then
  spark_submit="$repo/.venv/bin/spark-submit"
else
  echo "deploy/spark-submit.sh: no spark-submit: set SPARK_SUBMIT, put Spark's bin/ on PATH," \
    "or run bin/setup-env (pyspark installs one in .venv/bin)" >&2
  exit "$EXIT_BAD_INPUT"
fi

# The package zipped for the executors: written under a temporary name, then renamed, so
# that releases started at the same time never ship a half-written zip.
build_dir="${VALUEADDED_BUILD_DIR:-$repo/build}"
mkdir -p "$build_dir"
package_zip="$build_dir/valueadded-lib.zip"
partial_zip="$(mktemp "$build_dir/valueadded-lib.XXXXXX")"
trap 'rm -f "$partial_zip"' EXIT
"$python" - "$repo/lib" "$partial_zip" <<'PY'
import sys
import zipfile
from pathlib import Path

lib, target = Path(sys.argv[1]), sys.argv[2]
with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
    for path in sorted((lib / "valueadded").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            archive.write(path, path.relative_to(lib).as_posix())
PY
mv -f "$partial_zip" "$package_zip"

exec "$spark_submit" \
  ${defaults[@]+"${defaults[@]}"} \
  --conf spark.sql.session.timeZone=UTC \
  --conf spark.sql.parquet.outputTimestampType=TIMESTAMP_MICROS \
  --py-files "$package_zip$extra_py_files" \
  ${other_spark_args[@]+"${other_spark_args[@]}"} \
  "$repo/jobs/release.py" ${release_args[@]+"${release_args[@]}"}
