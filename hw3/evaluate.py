"""`python -m hw3.evaluate`: the evaluate command (hw3.cli.evaluate)."""

from hw3.cli import program
from hw3.cli.evaluate import main

if __name__ == "__main__":
    program(main)
