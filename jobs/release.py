"""spark-submit entry point: `spark-submit jobs/release.py --input ... --year ... --key-stage ks2 --stage validated`.

A thin wrapper: all behaviour is in `valueadded.cli`; the active cluster session is reused.
Run through `deploy/spark-submit.sh` (spark-submit) or as a Databricks Python script task
(`deploy/databricks/`). Exit codes are those of `valueadded.cli`: 0 ok, 1 internal
error, 2 bad input or configuration, 3 validation threshold exceeded.
"""

import sys
from pathlib import Path

# Import the package from the checkout this file is in, ahead of any installed copy: the
# package reads conf/ next to its source (valueadded.config.REPO_CONF_DIR), and neither
# spark-submit nor a Databricks script task installs it. On Databricks Runtime 13.3+ a
# directory on sys.path is also shipped to the executors.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from valueadded.cli import main  # noqa: E402  (needs the path above)

if __name__ == "__main__":
    sys.exit(main(["release", *sys.argv[1:]]))
