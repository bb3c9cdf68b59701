"""What Spark's whole-stage code generation makes of a frame's plan."""

from __future__ import annotations

import re

from pyspark.sql import DataFrame

# HotSpot's HugeMethodLimit (a develop flag: fixed in product JVMs). A longer method is never
# compiled: it runs in the interpreter, many times slower, for every row.
JVM_HUGE_METHOD_LIMIT = 8000


def generated_method_sizes(frame: DataFrame) -> list[int]:
    """Bytes of bytecode of the largest method of each whole-stage subtree Spark generates for
    the frame: the figures `frame.explain("codegen")` prints as maxMethodCodeSize.

    Planned with adaptive execution off: with it on, a plan with an exchange shows no
    subtrees until it runs. The code of each subtree is the same either way.
    """
    spark = frame.sparkSession
    adaptive = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        query = frame.select("*")._jdf.queryExecution()  # noqa: SLF001  (a new plan, planned now)
        text = spark._jvm.PythonSQLUtils.explainString(query, "codegen")  # noqa: SLF001
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", adaptive)
    return [int(size) for size in re.findall(r"maxMethodCodeSize:(\d+)", text)]


def largest_generated_method(frame: DataFrame) -> int:
    """The largest of `generated_method_sizes` (0: no generated code)."""
    return max(generated_method_sizes(frame), default=0)
