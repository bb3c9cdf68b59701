"""spark-submit entry point for the generated national cohort (`valueadded generate`)."""

import sys
from pathlib import Path

# The package from this checkout, next to the conf/ it reads (see jobs/release.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from valueadded.cli import main  # noqa: E402  (needs the path above)

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
