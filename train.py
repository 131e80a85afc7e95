#!/usr/bin/env python
"""hw3's front door. Everything happens in the hw3 package; see README.md.

accelerate launch train.py --recipe recipes/quickstart.yaml [key=value ...]
python train.py --recipe recipes/quickstart.yaml --print-config
"""

import sys

if __name__ == "__main__":
    try:
        from hw3.cli.train import program  # light: it installs the signal handlers before the heavy imports
    except KeyboardInterrupt:  # Ctrl-C in the first milliseconds, before hw3 had a handler
        print("stopped by SIGINT during start-up, before the run was set up", file=sys.stderr)
        sys.exit(130)
    program()
