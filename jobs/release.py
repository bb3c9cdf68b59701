"""spark-submit entry point: `spark-submit jobs/release.py --input ... --year ... --key-stage ks2 --stage validated`.

A thin wrapper: all behaviour is in `valueadded.cli`; the active cluster session is reused.
"""

import sys

from valueadded.cli import main

if __name__ == "__main__":
    sys.exit(main(["release", *sys.argv[1:]]))
