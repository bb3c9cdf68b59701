#!/usr/bin/env bash
# Run a release on a Spark cluster with spark-submit.
# Usage: deploy/spark-submit.sh --master yarn --input s3a://.../2024 --output s3a://.../valueadded \
#          --year 2024 --key-stage ks2 --stage validated
# Build the wheel first (python -m pip wheel --no-deps -w dist .) and make the pinned
# requirements available to the executors (a packed virtualenv or a cluster image).
# When the Delta JARs are on the cluster classpath and the session has the Delta SQL
# extension, tables are written natively by Spark; otherwise by delta-rs on the driver.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
master="local[2]"
if [ "${1:-}" = "--master" ]; then master="$2"; shift 2; fi
exec spark-submit --master "$master" \
  --conf spark.sql.session.timeZone=UTC \
  --conf spark.sql.parquet.outputTimestampType=TIMESTAMP_MICROS \
  "$here/jobs/release.py" "$@"
