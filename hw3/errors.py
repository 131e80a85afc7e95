"""The failures that end a launch with one `error:` line instead of a traceback, and the exit code of each.

| exit | meaning |
|---|---|
| 0 | trained (or nothing left to do) |
| 1 | stopped on non-finite steps (train.max_bad_steps); rerun retries from the last good checkpoint |
| 2 | a mistake in the input: recipe, override, data path, checkpoint (UserError) |
| 3 | another process of a multi-process run died or stopped answering (PeerLost); rerun to resume |
| 4 | the run dir could not be written: disk full, read-only, permissions (WriteFailed); free space, rerun |
| 5 | another launch holds the run dir (RunDirBusy); wait for it, or choose another output_dir |
| 128+N | stopped by signal N (130 SIGINT, 143 SIGTERM); rerun to continue from the checkpoint it saved |
"""


class LaunchError(Exception):
    """Ends the launch with one line `error: <message>` and `exit_code`.

    `quiet` is set on the processes that must not print it: when every process of a multi-process run raised the
    same error (they compared notes at a collective), the main process alone says it and the others exit with the
    same code, silently."""

    exit_code = 1
    quiet = False


class UserError(LaunchError):
    """A mistake in the user's input (recipe, override, data path, checkpoint)."""

    exit_code = 2


class PeerLost(LaunchError):
    """A peer process of a multi-process run died or a collective failed; the checkpoint on disk is intact."""

    exit_code = 3


class WriteFailed(LaunchError):
    """Writing into the run dir failed (disk full, read-only file system, permission denied); nothing partial was
    left behind, and the previous checkpoint and best/ are intact."""

    exit_code = 4


class RunDirBusy(UserError):
    """Another launch holds the run dir's lock (hw3.sweep counts such a run as running elsewhere, not failed)."""

    exit_code = 5
