"""One training launch: a recipe read and checked (recipe), a Run built from it (build), the launch's course from
its first line to its exit code (session), the epoch loop (loop), the training step (step), what happens between
two steps (boundary), evaluation (evaluation), early stopping (early_stop), the epoch's sums (sums), the final
summary (summary), trackers (tracking), the torch.compile guard (compile_guard), a search trial's reports (trial)
and the resolved config (resolved).

It may import everything below it (errors, config, storage, dist, runs, data, models, optim); reports,
experiments, inference and cli build on it.
"""
