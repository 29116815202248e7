"""Rules of a spec that span several keys, checked after each key is valid on its own."""

from __future__ import annotations

import math
import re

from tuning_platform.errors import SpecError
from tuning_platform.spec.conditions import conditions, cycle, is_conditional
from tuning_platform.spec.schema import (
    PARAM_PATTERN,
    ChoiceDomain,
    GridDomain,
    LogUniformDomain,
    PreferRule,
    Spec,
    UniformDomain,
)


def check_relations(spec: Spec, file: str) -> None:
    """Rules that span several keys, after each key is valid on its own."""
    for param in spec.search.space:
        if not re.match(PARAM_PATTERN, param):
            raise SpecError(file, f"search.space.{param}", "parameter names must be identifiers", param)
    for param in spec.search.fixed:
        if not re.match(PARAM_PATTERN, param):
            raise SpecError(file, f"search.fixed.{param}", "parameter names must be identifiers", param)
    clash = sorted(set(spec.search.space) & set(spec.search.fixed))
    if clash:
        raise SpecError(file, f"search.fixed.{clash[0]}", "is also in search.space; keep one", clash[0])
    if "data" in spec.search.space or "data" in spec.search.fixed:
        raise SpecError(file, "search", "'data' is reserved for the spec's data block", "data")

    epochs = spec.search.fixed.get("epochs")
    if epochs is None and spec.scheduler.type == "asha" and spec.scheduler.max_t is None:
        raise SpecError(
            file,
            "search.fixed.epochs",
            "required by the asha scheduler, which needs a horizon (max_t): set it, or scheduler.max_t, "
            "or use scheduler.type: fifo",
            None,
        )
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise SpecError(file, "search.fixed.epochs", "must be an integer >= 1", epochs)

    if spec.selection is not None and "seed" in spec.search.space:
        raise SpecError(file, "selection", "reseeds the best configurations, so seed cannot be searched", "seed")
    if spec.search.warm_start is not None and spec.search.algorithm != "optuna":
        raise SpecError(
            file, "search.warm_start", "needs algorithm: optuna (random search learns nothing)", spec.search.algorithm
        )
    if spec.search.sampler.type == "nsga2" and spec.search.algorithm != "optuna":
        raise SpecError(file, "search.sampler.type", "nsga2 needs search.algorithm: optuna", "nsga2")
    rule = spec.selection_rule
    names = [objective.metric for objective in spec.objective_list]
    if isinstance(rule, PreferRule) and rule.prefer not in names:
        rule_text = f"must name one of the objectives ({', '.join(names)})"
        raise SpecError(file, "selection.rule.prefer", rule_text, rule.prefer)
    if spec.search.algorithm == "optuna":
        for param, domain in spec.search.space.items():
            if isinstance(domain, ChoiceDomain):
                for value in domain.values:
                    if not (value is None or isinstance(value, (bool, int, float, str))):
                        raise SpecError(
                            file,
                            f"search.space.{param}.values",
                            "optuna choices must be numbers, strings, booleans or null",
                            value,
                        )

    _check_conditions(spec, file)
    _check_grid(spec, file)
    _check_pbt(spec, file)

    if spec.scheduler.max_t is not None and spec.epochs is not None and spec.scheduler.max_t > spec.epochs:
        raise SpecError(
            file, "scheduler.max_t", f"must be <= search.fixed.epochs ({spec.epochs})", spec.scheduler.max_t
        )
    if spec.scheduler.type == "asha" and spec.max_t is not None and spec.scheduler.grace_period > spec.max_t:
        raise SpecError(
            file,
            "scheduler.grace_period",
            f"must be <= the epochs a trial may train ({spec.max_t})",
            spec.scheduler.grace_period,
        )
    if spec.resources.workers > 1 and spec.resources.gpu > 1:
        # Each data-parallel worker drives one device; more GPUs per trial means more workers.
        raise SpecError(
            file,
            "resources.gpu",
            f"with workers > 1 it is per worker and must be <= 1 (use workers: "
            f"{spec.resources.workers * math.ceil(spec.resources.gpu)} and gpu: 1 instead)",
            spec.resources.gpu,
        )
    if spec.resources.workers > 1 and 0 < spec.resources.gpu < 1:
        # Workers of one trial would share a GPU, which NCCL refuses ("Duplicate GPU detected").
        raise SpecError(
            file,
            "resources.gpu",
            "with workers > 1 each worker needs a whole GPU (gpu: 1): NCCL refuses two ranks on one GPU; "
            "share GPUs between trials with workers: 1 instead",
            spec.resources.gpu,
        )


def _check_conditions(spec: Spec, file: str) -> None:
    """Each `when` names a choice (or grid) parameter of the space and some of its values; no
    parameter depends on itself through a chain of `when`s."""
    space = spec.search.space
    for param, domain in space.items():
        for name, allowed in conditions(domain).items():
            key = f"search.space.{param}.when.{name}"
            parent = space.get(name)
            if parent is None:
                known = ", ".join(n for n in space if n != param) or "none"
                raise SpecError(file, key, f"names no parameter of the space (its parameters: {known})", name)
            if not isinstance(parent, (ChoiceDomain, GridDomain)):
                raise SpecError(file, key, f"must name a choice parameter ({name} is {parent.type})", name)
            for value in allowed:
                if value not in parent.values:
                    raise SpecError(file, key, f"must be among {name}'s values {parent.values}", value)
    loop = cycle(space)
    if loop:
        raise SpecError(file, f"search.space.{loop[0]}.when", "the whens form a cycle", " -> ".join(loop))


def _check_grid(spec: Spec, file: str) -> None:
    grid_params = [name for name, domain in spec.search.space.items() if isinstance(domain, GridDomain)]
    if spec.search.algorithm != "grid":
        if grid_params:
            raise SpecError(
                file, f"search.space.{grid_params[0]}", "type: grid needs search.algorithm: grid", spec.search.algorithm
            )
        return
    for name, domain in spec.search.space.items():
        if isinstance(domain, (UniformDomain, LogUniformDomain)):
            raise SpecError(
                file,
                f"search.space.{name}",
                "a grid takes only grid, choice or int parameters; list the values to try "
                "as {type: grid, values: [...]}",
                domain.type,
            )


def _check_pbt(spec: Spec, file: str) -> None:
    scheduler = spec.scheduler
    if scheduler.type != "pbt":
        for key, default in (("perturbation_interval", None), ("mutations", {})):
            if getattr(scheduler, key) != default:
                raise SpecError(file, f"scheduler.{key}", "is a setting of scheduler.type: pbt", scheduler.type)
        return
    if spec.search.algorithm != "random":
        raise SpecError(
            file,
            "search.algorithm",
            "PBT picks its own configurations (random ones to start, then copies and perturbs the best); "
            "use search.algorithm: random with scheduler.type: pbt",
            spec.search.algorithm,
        )
    if is_conditional(spec.search.space):
        raise SpecError(
            file, "scheduler.type", "pbt cannot run a conditional space (when:): Ray's PBT takes no searcher", "pbt"
        )
    if spec.multi_objective or spec.constraints:
        raise SpecError(
            file, "scheduler.type", "pbt ranks trials by one metric: give metric/mode, no constraints", "pbt"
        )
    if spec.selection is not None and spec.selection.reseeds:
        raise SpecError(
            file, "selection", "PBT's result is a schedule, not a configuration to train again with new seeds", "pbt"
        )
    if spec.resources.workers > 1:
        raise SpecError(file, "resources.workers", "pbt runs trials of one worker", spec.resources.workers)
    if not scheduler.mutations:
        raise SpecError(
            file,
            "scheduler.mutations",
            "pbt needs the parameters to perturb, for example lr: {type: loguniform, low: 1e-4, high: 1e-1}",
            None,
        )
    for name, domain in scheduler.mutations.items():
        if name not in spec.search.space:
            known = ", ".join(spec.search.space) or "none"
            raise SpecError(file, f"scheduler.mutations.{name}", f"must be a parameter of search.space ({known})", name)
        if domain.when:
            raise SpecError(file, f"scheduler.mutations.{name}.when", "mutations are never conditional", domain.when)
    if spec.epochs is None:
        raise SpecError(file, "search.fixed.epochs", "required by the pbt scheduler, which perturbs by epochs", None)
    if scheduler.perturbation_interval is not None and scheduler.perturbation_interval >= spec.epochs:
        raise SpecError(
            file,
            "scheduler.perturbation_interval",
            f"must be < search.fixed.epochs ({spec.epochs}), or no trial is ever perturbed",
            scheduler.perturbation_interval,
        )
    if spec.search.max_concurrent is not None and spec.search.max_concurrent < spec.search.num_samples:
        # Tune bounds the trials alive at once, paused ones included: a PBT population of 8 at
        # max_concurrent 2 would be four populations of 2, one after the other, never copying
        # across. Ray's PBT keeps the whole population and takes turns on the resources
        # (`choose_trial_to_run`, ray/tune/schedulers/pbt.py).
        raise SpecError(
            file,
            "search.max_concurrent",
            f"pbt keeps its whole population (search.num_samples: {spec.search.num_samples}) alive and takes turns "
            "on the resources, which bound the trials training at once (resources.cpu, resources.gpu); "
            "remove it (--set search.max_concurrent=)",
            spec.search.max_concurrent,
        )
