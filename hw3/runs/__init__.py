"""The run directory and what it records: its layout and file names (layout), one writer at a time (lock), where
a launch starts (start), checkpoints that verify themselves (checkpoints), the best weights (best), the counters
a resumed run continues from (state), and the metrics a run records with which way is better (metrics).

It may import hw3.errors, hw3.config, hw3.storage and hw3.dist; the components and the engine build on it.
"""
