"""`python -m hw3.report`: the report command (hw3.cli.report)."""

from hw3.cli import program
from hw3.cli.report import main

if __name__ == "__main__":
    program(main)
