"""`python -m hw3.cli` is train.py wherever hw3 is installed (hw3.sweep and hw3.search launch their runs with it)."""

if __name__ == "__main__":
    from hw3.cli.train import program

    program()
