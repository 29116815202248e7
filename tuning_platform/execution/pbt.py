"""Population-based training: Ray's `PopulationBasedTraining` from a spec's `scheduler: {type:
pbt}`, and the lineage it leaves.

The population is the job's `search.num_samples` trials, started from random configurations.
Every `perturbation_interval` epochs a trial in the bottom `quantile_fraction` copies the
checkpoint of one in the top and goes on from it with the donor's configuration, its `mutations`
perturbed (Ray's rules: resampled with `resample_probability`, else a number times 0.8 or 1.2 and
a choice moved to a neighbouring value; here a number is then kept inside its mutation's range).

`PopulationTraining` adds these to Ray's scheduler, all in `_exploit`:

- when the donor's retention has deleted the checkpoint PBT saved at its last perturbation, the
  donor's latest is copied instead (`_keep_a_checkpoint_to_copy`);
- the donor's checkpoint is copied into the trial's own folder and the trial restores from the
  copy: Ray points it at the donor's, which the donor's checkpoint retention (the best 2 and the
  latest, `execution/checkpoints.py`) may delete before the trial starts again;
- each trial's schedule is written in the experiment folder on the storage path, in the format of
  Ray's `log_config` files that `PopulationBasedTrainingReplay` reads (`pbt_policy_TRIAL.txt`,
  json lines `[trial, donor, epoch, donor_epoch, donor_config, new_config]`, the donor's lines
  first; all exploits in `pbt_global.txt`). Ray writes its own to the driver's staging folder,
  which `--resume` does not bring back (only `.json` and `.pkl` files are), and names the donor's
  epoch at the exploit rather than the epoch of the checkpoint copied; these name trials by id and
  the epoch the trial goes on from, and survive a kill;
- each exploit waits for the trial-runs callback (`tracking/callback.py`) in this process, which
  writes it on the trial's MLflow run (`take_exploits`, `mutated_params`): Tune gives a callback no
  handle on its scheduler, and pickles the two apart into a job's saved state.

Tune pickles this scheduler into a job's saved state by its import path: the class never moves
without an entry in `_compat/moved.py`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from tuning_platform._compat.ray import (
    pbt_last_result,
    pbt_replace_saved_checkpoint,
    pbt_saved_checkpoint,
    pbt_score,
    restore_from,
)
from tuning_platform.records import compact_number, result_step
from tuning_platform.spec import ChoiceDomain, IntDomain, to_tune_domain

if TYPE_CHECKING:
    import pyarrow.fs

    from tuning_platform.spec import Spec

logger = logging.getLogger(__name__)

POLICY_FILE = "pbt_policy_{trial_id}.txt"  # Ray's names for them
GLOBAL_FILE = "pbt_global.txt"
# The folder of a trial's copy of the checkpoint it exploited, inside the trial's own folder.
COPY_FOLDER = "pbt_copy_at_{epoch}_of_{donor}_epoch_{donor_epoch}"


def perturbation_interval(spec: Spec) -> int:
    """Epochs between a trial's perturbations: the spec's, or a quarter of the epochs (at least 1)."""
    given = spec.scheduler.perturbation_interval
    if given is not None:
        return given
    assert spec.epochs is not None  # the spec's rules require epochs for pbt
    return max(1, spec.epochs // 4)


def hyperparam_mutations(spec: Spec) -> dict[str, Any]:
    """The spec's mutations as Ray takes them: a Tune domain to resample from and multiply, a
    list for a choice (Ray moves it to a neighbouring value; a domain would be multiplied)."""
    return {
        name: list(domain.values) if isinstance(domain, ChoiceDomain) else to_tune_domain(domain)
        for name, domain in spec.scheduler.mutations.items()
    }


class WithinBounds:
    """Ray's `custom_explore_fn`: a number Ray multiplied by 0.8 or 1.2 stays inside its
    mutation's range, as a trial's starting value does (Ray itself lets lr grow past `high`)."""

    def __init__(self, bounds: dict[str, tuple[float, float]]):
        self.bounds = dict(bounds)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (low, high) in self.bounds.items():
            value = config.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                config[name] = type(value)(min(max(value, low), high))
        return config


def mutation_bounds(spec: Spec) -> dict[str, tuple[float, float]]:
    return {
        name: (domain.low, domain.high)
        for name, domain in spec.scheduler.mutations.items()
        if not isinstance(domain, ChoiceDomain)
    }


def build_pbt(spec: Spec) -> PopulationTraining:
    """Ray's PBT from the spec. Its metric and mode come from the job's `TuneConfig`, as every
    scheduler's do; its time is the epoch the trainable reports."""
    for name, domain in spec.scheduler.mutations.items():
        if isinstance(domain, IntDomain) and domain.log:
            logger.debug("pbt mutates %s by 0.8/1.2 and rounds it, log or not", name)
    return PopulationTraining(
        time_attr="epoch",
        perturbation_interval=perturbation_interval(spec),
        quantile_fraction=spec.scheduler.quantile_fraction,
        resample_probability=spec.scheduler.resample_probability,
        hyperparam_mutations=hyperparam_mutations(spec),
        custom_explore_fn=WithinBounds(mutation_bounds(spec)),
        # The policy files are written here instead (see the module's text).
        log_config=False,
        horizon=spec.epochs,
        searched=tuple(spec.search.space),
    )


@dataclass(frozen=True)
class Exploit:
    """A trial that copied another's checkpoint and went on from it, perturbed."""

    trial_id: str
    donor_id: str
    epoch: int  # the trial's epoch when it copied
    donor_epoch: int  # the epoch of the donor's checkpoint it goes on from
    before: dict[str, Any]  # the donor's values of the mutated parameters
    after: dict[str, Any]  # the perturbed values the trial goes on with
    config: dict[str, Any] = field(default_factory=dict)  # every searched parameter it goes on with

    def line(self, donor_name: str | None = None) -> str:
        """`epoch 8: copied trial t03 at epoch 8, lr 0.01 -> 0.012`"""
        changes = ", ".join(f"{name} {_shown(self.before.get(name))} -> {_shown(v)}" for name, v in self.after.items())
        return f"epoch {self.epoch}: copied trial {donor_name or self.donor_id} at epoch {self.donor_epoch}, {changes}"


def _shown(value: Any) -> str:
    return compact_number(value) if isinstance(value, float) else str(value)


# What the scheduler leaves for the trial-runs callback of the same driver, by trial id (trial ids
# are unique across runs, so two jobs in one process never mix): the parameters PBT perturbs, and
# the exploits not yet written.
_MUTATED: dict[str, tuple[str, ...]] = {}
_EXPLOITS: dict[str, list[Exploit]] = {}


def mutated_params(trial_id: str) -> tuple[str, ...]:
    """The parameters PBT perturbs for this trial; none when it is not in a PBT run."""
    return _MUTATED.get(trial_id, ())


def take_exploits(trial_id: str) -> list[Exploit]:
    """The trial's exploits since the last call (once: they are taken)."""
    return _EXPLOITS.pop(trial_id, [])


class PopulationTraining(PopulationBasedTraining):
    """Ray's PBT, recording each exploit (see the module's text), with two rules Ray lacks:

    - a trial at its last epoch (`horizon`) ends there: Ray would perturb it too, throw away its
      end and train the donor's last epochs again, and a trial that ranks last at every end
      (ties) did that in a loop, over 60 times in a row in a job of 4 trials here;
    - a trial copies only a donor that scored strictly better: with tied scores (a saturated
      metric) Ray's ranking still puts one of them in the bottom quantile.
    """

    def __init__(self, *args: Any, horizon: int | None = None, searched: Sequence[str] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.horizon = horizon
        self.searched = tuple(searched)  # the space's parameters, recorded with each copy

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        with warnings.catch_warnings():
            # Ray warns that checkpoint retention (num_to_keep <= 2) may delete a checkpoint before
            # a trial copies it: `_exploit` copies the donor's latest when the saved one is gone,
            # into the trial's own folder, so it is not deleted before the trial restores.
            warnings.filterwarnings("ignore", message=".*num_to_keep <= 2.*")
            super().on_trial_add(tune_controller, trial)
        _MUTATED[trial.trial_id] = tuple(self._hyperparam_mutations)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self.horizon is not None and result_step(result) >= self.horizon:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        if not pbt_score(self, trial_to_clone) > pbt_score(self, trial):
            return  # a tie: nothing better to copy
        _keep_a_checkpoint_to_copy(self, trial_to_clone)
        epoch = result_step(pbt_last_result(self, trial))
        donor_result = pbt_last_result(self, trial_to_clone)
        donor_epoch = result_step(donor_result)
        donor_config = dict(trial_to_clone.config)
        super()._exploit(tune_controller, trial, trial_to_clone)
        names = tuple(self._hyperparam_mutations)
        exploit = Exploit(
            trial_id=trial.trial_id,
            donor_id=trial_to_clone.trial_id,
            epoch=epoch,
            donor_epoch=donor_epoch,
            before={name: donor_config.get(name) for name in names},
            after={name: trial.config.get(name) for name in names},
            config={name: trial.config[name] for name in self.searched if name in trial.config},
        )
        try:
            _own_copy(trial, donor_result, exploit)
        except Exception as err:  # noqa: BLE001 - Ray's pointer to the donor's checkpoint still serves
            logger.warning(
                "warning: trial %s: the checkpoint it copied from %s was not copied into its folder (%s: %s); "
                "it restores from the donor's, which the donor may delete first",
                trial.trial_id,
                trial_to_clone.trial_id,
                type(err).__name__,
                err,
            )
        try:
            _write_policy(trial, donor_config, exploit)
        except Exception as err:  # noqa: BLE001 - the schedule file is a record, not the training
            logger.warning(
                "warning: trial %s: PBT schedule not written: %s: %s", trial.trial_id, type(err).__name__, err
            )
        _EXPLOITS.setdefault(trial.trial_id, []).append(exploit)
        logger.info("note: PBT: trial %s %s", trial.trial_id, exploit.line())


def _keep_a_checkpoint_to_copy(scheduler: PopulationTraining, donor: Any) -> None:
    """Ray copies the checkpoint it saved at the donor's last perturbation, and the donor's
    retention (its best 2 and its latest) deletes it once the donor has trained two better
    epochs since, which a donor running ahead of the trial does within one perturbation
    interval. Then the donor's latest checkpoint, which retention always keeps, is copied: the
    same lineage, a few epochs on. The driver deletes checkpoints in this same thread, so what
    exists here still exists when it is copied."""
    saved = pbt_saved_checkpoint(scheduler, donor)
    if saved is None or _exists(saved):
        return
    latest = donor.latest_checkpoint_result
    if latest is None or latest.checkpoint is None or not _exists(latest.checkpoint):
        return  # nothing left to copy: Ray's restore fails and the trial is retried as any failure
    logger.info(
        "note: PBT: trial %s's checkpoint saved at epoch %s was deleted by its retention; its latest, of epoch %s, "
        "is copied",
        donor.trial_id,
        result_step(pbt_last_result(scheduler, donor)),
        result_step(latest.metrics or {}),
    )
    pbt_replace_saved_checkpoint(scheduler, donor, latest.checkpoint, latest.metrics or {})


def _exists(checkpoint: Any) -> bool:
    import pyarrow.fs

    return checkpoint.filesystem.get_file_info(checkpoint.path).type != pyarrow.fs.FileType.NotFound


def _own_copy(trial: Any, donor_result: dict[str, Any], exploit: Exploit) -> None:
    """Copy the checkpoint the trial now restores from into its own folder, and point it there."""
    import pyarrow.fs
    from ray.tune import Checkpoint

    latest = trial.latest_checkpoint_result
    if latest is None or latest.checkpoint is None:
        return
    source = latest.checkpoint
    storage = trial.storage
    folder = COPY_FOLDER.format(epoch=exploit.epoch, donor=exploit.donor_id, donor_epoch=exploit.donor_epoch)
    target = f"{storage.trial_fs_path}/{folder}"
    storage.storage_filesystem.create_dir(target, recursive=True)
    pyarrow.fs.copy_files(
        source.path,
        target,
        source_filesystem=source.filesystem,
        destination_filesystem=storage.storage_filesystem,
    )
    restore_from(trial, Checkpoint(target, filesystem=storage.storage_filesystem), donor_result)
    _delete_earlier_copies(storage.storage_filesystem, storage.trial_fs_path, keep=folder)


def _delete_earlier_copies(fs: pyarrow.fs.FileSystem, trial_path: str, keep: str) -> None:
    """The trial's earlier copies: it has trained and saved checkpoints of its own since each
    (it copies only at a perturbation), and Tune's retention does not know them."""
    import pyarrow.fs

    prefix = COPY_FOLDER.split("{", 1)[0]
    for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_path)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(prefix) and info.base_name != keep:
            fs.delete_dir(info.path)


def _policy_path(trial: Any, trial_id: str) -> str:
    return "/".join((trial.storage.experiment_fs_path, POLICY_FILE.format(trial_id=trial_id)))


def _write_policy(trial: Any, donor_config: dict[str, Any], exploit: Exploit) -> None:
    """The trial's schedule: the donor's lines (how its checkpoint was trained), then this one."""
    fs = trial.storage.storage_filesystem
    donor_lines = list(_lines(fs, _policy_path(trial, exploit.donor_id)))
    line = json.dumps(
        [exploit.trial_id, exploit.donor_id, exploit.epoch, exploit.donor_epoch, donor_config, dict(trial.config)],
        default=str,
    )
    _write_text(fs, _policy_path(trial, exploit.trial_id), "".join(f"{text}\n" for text in [*donor_lines, line]))
    global_path = "/".join((trial.storage.experiment_fs_path, GLOBAL_FILE))
    _write_text(fs, global_path, "".join(f"{text}\n" for text in [*_lines(fs, global_path), line]))


def _lines(fs: pyarrow.fs.FileSystem, path: str) -> list[str]:
    import pyarrow.fs

    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return []
    with fs.open_input_stream(path) as stream:
        return [line for line in stream.read().decode().splitlines() if line.strip()]


def _write_text(fs: pyarrow.fs.FileSystem, path: str, text: str) -> None:
    # Whole files, written anew: an object store cannot append.
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


# --- Reading a finished run's lineage (the job's end) ----------------------------------------------


def _filesystem(experiment_path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs

    if "://" not in experiment_path:
        experiment_path = os.path.abspath(experiment_path)
    return pyarrow.fs.FileSystem.from_uri(experiment_path)


def policy_lines(experiment_path: str, trial_id: str) -> list[list[Any]]:
    """The trial's schedule as its policy file in the run's folder holds it ([] when it never
    copied another trial)."""
    fs, base = _filesystem(experiment_path)
    return [json.loads(line) for line in _lines(fs, f"{base}/{POLICY_FILE.format(trial_id=trial_id)}")]


def all_exploits(experiment_path: str) -> list[list[Any]]:
    """Every exploit of the run, in the order they happened (`pbt_global.txt`)."""
    fs, base = _filesystem(experiment_path)
    return [json.loads(line) for line in _lines(fs, f"{base}/{GLOBAL_FILE}")]


def schedule_policy(lines: list[list[Any]], trial_id: str, config: dict[str, Any]) -> list[list[Any]]:
    """What `PopulationBasedTrainingReplay` replays for the trial: its policy lines, or for a
    trial that never copied another one line that starts it with its own configuration."""
    return lines or [[trial_id, trial_id, 0, 0, config, config]]


@dataclass(frozen=True)
class Segment:
    first: int  # epochs first..last trained with `values`
    last: int | None  # None: to the end
    values: dict[str, Any]


def schedule(lines: Sequence[Sequence[Any]], names: Sequence[str]) -> list[Segment]:
    """The mutated parameters' values over the epochs, as `PopulationBasedTrainingReplay` reads a
    policy file: the first line's donor configuration from epoch 1, then each line's new one
    after its donor's epoch."""
    if not lines:
        return []
    changes = [(0, dict(lines[0][4]))] + [(int(line[3]), dict(line[5])) for line in lines]
    segments: list[Segment] = []
    for index, (after, config) in enumerate(changes):
        values = {name: config.get(name) for name in names}
        last = changes[index + 1][0] if index + 1 < len(changes) else None
        if last is not None and last <= after:
            continue  # replaced before it trained an epoch
        if segments and segments[-1].values == values:
            segments[-1] = Segment(segments[-1].first, last, values)
        else:
            segments.append(Segment(after + 1, last, values))
    return segments


def schedule_text(segments: Sequence[Segment], epochs: int | None = None) -> str:
    """`lr 0.01 (epochs 1-4) -> 0.012 (5-8) -> 0.0096 (9-12)`"""
    parts = []
    for index, segment in enumerate(segments):
        last = segment.last if segment.last is not None else epochs
        span = f"{segment.first}-{last}" if last is not None and last != segment.first else f"{segment.first}"
        if last is None:
            span = f"{segment.first}-"
        values = ", ".join(
            (_shown(v) if index and len(segment.values) == 1 else f"{name} {_shown(v)}")
            for name, v in segment.values.items()
        )
        parts.append(f"{values} ({'epochs ' if not index else ''}{span})")
    return " -> ".join(parts)


def final_lineage_checkpoint(result: Any, metric: str, mode: str) -> tuple[Any, dict[str, Any]] | None:
    """The checkpoint of a PBT trial to register: its best one trained with the configuration it
    ended with, i.e. after its last copy (its earlier checkpoints come from another lineage, which
    its schedule does not describe); the latest, which always is, when none of those is kept."""
    from tuning_platform.ranking import score

    final = _comparable(result.config or {})
    kept = [
        (checkpoint, metrics)
        for checkpoint, metrics in (result.best_checkpoints or [])
        if _comparable(metrics.get("config") or {}) == final and _finite(metrics.get(metric))
    ]
    if kept:
        return max(kept, key=lambda pair: score(float(pair[1][metric]), mode))
    if result.checkpoint is None:
        return None
    return result.checkpoint, dict(result.metrics or {})


def _comparable(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
