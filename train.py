#!/usr/bin/env python
"""hw3's front door. Everything happens in the hw3 package; see README.md.

accelerate launch train.py --recipe recipes/quickstart.yaml [key=value ...]
python train.py --recipe recipes/quickstart.yaml --print-config
"""

import sys

from hw3.cli import main

if __name__ == "__main__":
    sys.exit(main())
