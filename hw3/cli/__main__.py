"""`python -m hw3.cli` is train.py wherever hw3 is installed (hw3.sweep and hw3.search launch their runs with it)."""

import sys


def main() -> None:
    try:
        from hw3.cli.train import program  # light: it installs the signal handlers before the heavy imports
    except KeyboardInterrupt:  # Ctrl-C in the first milliseconds, before hw3 had a handler
        print("stopped by SIGINT during start-up, before the run was set up", file=sys.stderr)
        sys.exit(130)
    program()


if __name__ == "__main__":
    main()
