#!/usr/bin/env python
"""hw3's front door. Everything happens in the hw3 package; see README.md.

accelerate launch train.py --recipe recipes/quickstart.yaml [key=value ...]
python train.py --recipe recipes/quickstart.yaml --print-config
"""

if __name__ == "__main__":
    from hw3.cli.__main__ import main  # the same door as `python -m hw3.cli`

    main()
