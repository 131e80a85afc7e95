"""`python -m hw3.sweep`: the sweep command (hw3.cli.sweep)."""

from hw3.cli import program
from hw3.cli.sweep import main

if __name__ == "__main__":
    program(main)
