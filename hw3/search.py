"""`python -m hw3.search`: the search command (hw3.cli.search)."""

from hw3.cli import program
from hw3.cli.search import main

if __name__ == "__main__":
    program(main)
