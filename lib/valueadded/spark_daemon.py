"""The Python worker daemon of local sessions: pyspark's own, without Spark's zip archives.

Spark puts its `python/lib/pyspark.zip` and py4j's source zip first on the path of every
Python worker it starts. Before each Python task, pyspark's worker calls
`importlib.invalidate_caches()` (pyspark.worker_util.setup_spark_files), and from Python
3.10 that makes the importer of each zip on the path read the archive's directory again:
pyspark.zip holds 1,220 files. Measured with py-spy on national KS2 releases
(unvalidated, then validated), 35% of the samples of all Python processes were in that
re-reading; without it, the CPU time of the Python processes per release fell from
12-15 s to 8-9 s.

Where pyspark and py4j are installed as packages (a pip install, as in `.venv`), the
zips hold the same code, so this module takes them off the path and then starts
pyspark's daemon (`spark.python.daemon.module`, set by valueadded.spark for local
sessions). Where the packages are found only in the zips, the path is left as it is.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder

NEEDED = ("pyspark", "py4j")


def is_spark_archive(entry: str) -> bool:
    """True for the pyspark and py4j zips that Spark puts on its Python workers' path."""
    name = os.path.basename(entry)
    return name == "pyspark.zip" or (name.startswith("py4j-") and name.endswith("-src.zip"))


def without_spark_archives(path: list[str]) -> list[str]:
    """`path` without Spark's zips when pyspark and py4j are importable from the rest; else `path`."""
    kept = [entry for entry in path if not is_spark_archive(entry)]
    if len(kept) == len(path) or any(PathFinder.find_spec(name, kept) is None for name in NEEDED):
        return list(path)
    return kept


def main() -> None:
    kept = without_spark_archives(sys.path)
    for entry in [entry for entry in sys.path if entry not in kept]:
        sys.path.remove(entry)
        sys.path_importer_cache.pop(entry, None)
    from pyspark import daemon  # imported after the path change, so from the package

    daemon.manager()


if __name__ == "__main__":
    main()
