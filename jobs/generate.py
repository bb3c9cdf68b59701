"""spark-submit entry point for the generated national cohort (`valueadded generate`)."""

import sys

from valueadded.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
