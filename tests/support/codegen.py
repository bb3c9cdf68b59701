"""What Spark's whole-stage code generation makes of a frame's plan."""

from __future__ import annotations

import re

from pyspark.sql import DataFrame

# HotSpot's HugeMethodLimit (a develop flag: fixed in product JVMs). A longer method is never
# compiled: it runs in the interpreter, many times slower, for every row.
JVM_HUGE_METHOD_LIMIT = 8000


def largest_generated_method(frame: DataFrame) -> int:
    """Bytes of bytecode of the largest method Spark generates for the frame (0: none).

    The same figure `frame.explain("codegen")` prints as maxMethodCodeSize per subtree.
    """
    query = frame._jdf.queryExecution()  # noqa: SLF001
    text = frame.sparkSession._jvm.PythonSQLUtils.explainString(query, "codegen")  # noqa: SLF001
    return max((int(size) for size in re.findall(r"maxMethodCodeSize:(\d+)", text)), default=0)
