"""Where bytes live and how they get there: files written so that a reader sees the old version or the new one,
never half (files); folders that verify themselves against a manifest written last (manifest); write failures, a
full disk above all, told in one line naming the file (files); the Hugging Face Hub's reachability (hub).

It may import hw3.errors only: runs, data and models build on it.
"""
