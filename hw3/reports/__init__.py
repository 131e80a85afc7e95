"""What people read after runs: the table comparing runs (runs), a sweep's statistics (sweep), a search's trials
(search), and the plots beside them (plots, where matplotlib is set up once). Everything here reads run dirs and
studies; nothing trains.

It may import hw3.errors, hw3.config, hw3.storage (a search's study storage) and hw3.runs.
"""
