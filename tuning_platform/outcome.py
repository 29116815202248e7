"""What a job did, as the API returns it: `TuneResult`, one `TrialRow` per trial, and the
`Registration` of its model. Plain data: building one needs no MLflow, Ray or torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuning_platform.ranking import score
from tuning_platform.records import UNSTABLE, TrialStatus

if TYPE_CHECKING:
    import pandas as pd

    from tuning_platform.insight import Insight
    from tuning_platform.search.front import Front
    from tuning_platform.search.selection import Selection


@dataclass
class TrialRow:
    trial_id: str
    status: TrialStatus  # completed | early_stopped | diverged | failed | interrupted
    epochs: int
    value: float | None  # best finite value of the spec's metric over the trial's epochs
    params: dict[str, Any]  # its active parameters only: none a `when:` made inactive for it
    error: str | None = None  # a failed trial's last error line
    # The last value of each metric the job judges a trial by (its objectives and constraints).
    finals: dict[str, float] = field(default_factory=dict)


def stable(rows: list[TrialRow]) -> list[TrialRow]:
    """The rows with a value whose trial neither failed nor diverged, in their order."""
    return [row for row in rows if row.value is not None and row.status not in UNSTABLE]


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Best value first (ties keep their order), rows without a value last."""
    return sorted(rows, key=lambda r: (r.value is None, -score(r.value or 0.0, mode)))


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The trial with the best value; a trial that failed or diverged never is: its
    configuration is unstable."""
    candidates = ranked(stable(rows), mode)
    return candidates[0] if candidates else None


@dataclass
class Registration:
    name: str
    version: str
    champion_version: str | None
    notes: list[str] = field(default_factory=list)
    # The model's scores on the test split no trial saw (`test_accuracy`, ...); empty without one.
    test_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def took_champion(self) -> bool:
        return self.champion_version == self.version

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass
class TuneResult:
    """What a job did: its trials, the best one, its MLflow records and the registered model."""

    metric: str
    mode: str
    tracking_uri: str
    experiment_name: str
    experiment_id: str
    parent_run_id: str
    run_name: str
    # Where Ray keeps the job's state (`resume` continues from it).
    experiment_path: str = ""
    rows: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    registration: Registration | None = None
    # (name, metrics) of the trainable's simple reference model on the same split.
    baseline: tuple[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    # Stopped by Ctrl-C or SIGTERM before every trial ended (then nothing was registered).
    interrupted: bool = False
    # Importances and pictures of the search, on the parent run.
    insight: Insight | None = None
    # The reseeded top configurations, with `selection` in the spec.
    selection: Selection | None = None
    # The Pareto front, for a job of several objectives or with constraints.
    front: Front | None = None
    # Trials ended well but none met the constraints: nothing registered, and not a failure.
    infeasible: bool = False

    @property
    def best_config(self) -> dict[str, Any] | None:
        return None if self.best is None else dict(self.best.params)

    @property
    def best_metric(self) -> float | None:
        return None if self.best is None else self.best.value

    @property
    def best_trial_id(self) -> str | None:
        return None if self.best is None else self.best.trial_id

    @property
    def model_name(self) -> str | None:
        return None if self.registration is None else self.registration.name

    @property
    def model_version(self) -> str | None:
        return None if self.registration is None else self.registration.version

    @property
    def model_uri(self) -> str | None:
        return None if self.registration is None else self.registration.uri

    @property
    def champion_version(self) -> str | None:
        return None if self.registration is None else self.registration.champion_version

    @property
    def test_metrics(self) -> dict[str, float]:
        """The registered model's scores on the test split no trial saw."""
        return {} if self.registration is None else dict(self.registration.test_metrics)

    @property
    def took_champion(self) -> bool:
        return self.registration is not None and self.registration.took_champion

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial: id, status, epochs, the metric's best value, error, params (NaN
        where a trial does not hold a parameter: inactive by its `when:`)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "trial_id": r.trial_id,
                    "status": str(r.status),
                    "epochs": r.epochs,
                    self.metric: r.value,
                    "error": r.error,
                    **{f"config.{k}": v for k, v in r.params.items()},
                }
                for r in self.rows
            ],
            columns=None if self.rows else ["trial_id", "status", "epochs", self.metric, "error"],
        )
