"""`python -m hw3.shards`: the shards command (hw3.cli.shards)."""

from hw3.cli import program
from hw3.cli.shards import main

if __name__ == "__main__":
    program(main)
