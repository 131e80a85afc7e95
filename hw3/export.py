"""`python -m hw3.export`: the export command (hw3.cli.export)."""

from hw3.cli import program
from hw3.cli.export import main

if __name__ == "__main__":
    program(main)
