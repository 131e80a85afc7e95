"""`python -m hw3.predict`: the predict command (hw3.cli.predict)."""

from hw3.cli import program
from hw3.cli.predict import main

if __name__ == "__main__":
    program(main)
