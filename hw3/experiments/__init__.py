"""Many runs at once: a grid of recipe values times seeds (sweep), a hyper-parameter search with Optuna (search),
and how both launch their runs, K at a time, each an ordinary `python -m hw3.cli` run with its log (launch).
Their reports are hw3.reports.

It may import everything but hw3.inference and hw3.cli; it starts runs as processes, never in its own.
"""
