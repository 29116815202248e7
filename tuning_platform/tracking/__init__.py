"""MLflow records of a job: one parent run, one nested child run per trial.

Only the driver talks to MLflow (a Tune `Callback` runs in the driver), so workers on other
nodes never need to reach the tracking server and a SQLite store sees a single writer per job.

    client.py          opening the store: busy timeout, template, first-use lock, UI links
    store_template.py  a new SQLite store copied from a template instead of MLflow's migrations
    queries.py         reading runs back: trial runs, metric histories in bulk
    parent.py          JobTracker: the parent run, and closing the trial runs with it
    writer.py          RunWriter: the trial runs' writes, batched off Tune's loop
    callback.py        TrialRunsCallback: the Tune callback that writes each trial
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # A job saved before this module became a package pickled its callback as
    # `tuning_platform.tracking.TrialRunsCallback` (tuning_platform/_compat/moved.py).
    if name == "TrialRunsCallback":
        from tuning_platform.tracking.callback import TrialRunsCallback

        return TrialRunsCallback
    raise AttributeError(name)
