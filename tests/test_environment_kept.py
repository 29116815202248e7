"""`tune()` puts the process environment back as it was, without a moment where other threads
of the process (a notebook's, Ray's) find variables missing."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping

from tuning_platform.api import environment_kept


class RecordedEnviron(MutableMapping[str, str]):
    """os.environ as the code sees it, noting every variable removed while it is put back."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)
        self.removed: list[str] = []

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def __setitem__(self, key: str, value: str) -> None:
        self.values[key] = value

    def __delitem__(self, key: str) -> None:
        self.removed.append(key)
        del self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.values))

    def __len__(self) -> int:
        return len(self.values)


def test_the_environment_is_put_back_variable_by_variable(monkeypatch):
    environ = RecordedEnviron({"HOME": "/home/me", "KEPT": "1", "CHANGED": "before", "DROPPED": "x"})
    monkeypatch.setattr(os, "environ", environ)
    with environment_kept():
        os.environ["CHANGED"] = "during"
        os.environ["ADDED"] = "by the job"
        del os.environ["DROPPED"]
        environ.removed.clear()  # what the job itself removed
    assert dict(environ) == {"HOME": "/home/me", "KEPT": "1", "CHANGED": "before", "DROPPED": "x"}
    # Only what the job added went away: HOME and KEPT were never missing, not even for a moment.
    assert environ.removed == ["ADDED"]
