"""Several processes that start, agree and fail together, and one process's dealings with the operating system.

- processes: the process group (restartable under torchrun), agreeing on errors and values, the main process first.
- peers: who runs where; a lost peer told apart from a signal, and from any other error.
- signals: SIGTERM and SIGINT handled one way for a whole launch.
- launcher: a worker that notices its launcher is gone.
- faults: crash points for the fault-injection tests.

It may import hw3.errors only (signals and faults only the standard library: the door imports them first).
"""
