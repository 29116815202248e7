"""Parameter importances of a job's search: Optuna's fANOVA over the recorded trials.

A conditional parameter (`when:`) has no importance among the others: fANOVA fits its forest
on the parameters every trial holds (Optuna's `FanovaImportanceEvaluator` with `params=None`
takes the study's `intersection_search_space`, optuna/importance/_base.py `_get_distributions`,
Optuna 5.0), and a trial holds only its active parameters. What the branch as a whole is
worth shows as the importance of the parameter its `when` names (`optimizer`). Within its
branch, a conditional parameter gets its own importance (`branch_importances`): fANOVA over the
trials where it is active, which do share its search space, as its share of the variance among
them. The two are shares of different variances and never sum together; a branch of fewer than
BRANCH_TRIALS trials gets none.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from tuning_platform.objectives import Objective
from tuning_platform.ranking import direction
from tuning_platform.search.study import RecordedTrial, distributions, fitting_params, quiet_optuna
from tuning_platform.spec import Spec
from tuning_platform.spec.conditions import conditions

logger = logging.getLogger(__name__)

EVALUATOR = "fANOVA"

# Trials fANOVA is fitted on at most: its forest and marginal variances cost minutes on the
# 10,000 trials of a large job; on a sample of 1,000 about 18 s here, of 500 about 6 s, with
# importances within 0.03 of the 1,000-trial ones (2 parameters, a 3,000-trial job).
IMPORTANCE_TRIALS = 500
# Trees of the forest: half of Optuna's default 64, for every job. Measured on studies of the
# mlp spec's 7 parameters (a throwaway script): at 60 trials 32 trees gave importances within
# 0.007 of 64 trees, at 300 within 0.005, while another seed of the 64-tree forest moved them by
# 0.05 and 0.03; the cost halves (60 trials: 345 to 176 ms; 300: 2.8 to 1.4 s), nearly all of it
# Optuna's own walk of each tree. Earlier, on a 10,000-trial job's samples of 500: 32 trees within
# 0.003 of 64, in 2.9 s instead of 6.4 s.
TREES = 32
# Trials a branch needs (those where its conditional parameters are active) for their importances
# within it: a forest on fewer says more about the few trials than about the parameter.
BRANCH_TRIALS = 6


def importances(
    spec: Spec, scored: list[tuple[RecordedTrial, float]], objective: Objective | None = None
) -> dict[str, float]:
    """fANOVA importances of the searched parameters every trial holds (all of them, without
    `when:`) for the trials' values of one objective (default: the spec's metric), summing to 1,
    most important first; from a seeded sample of IMPORTANCE_TRIALS trials in a larger job."""
    objective = objective or Objective(spec.metric, spec.mode)
    if len(spec.search.space) == 1:
        # Shares of the variance, summing to 1, of one parameter: 1, as fANOVA's forest would say
        # (tests/test_study.py compares), without importing scikit-learn and fitting it (2.4 s
        # at the end of a 300-trial job in a new process). Unless every trial has the same value,
        # when fANOVA finds no variance to share.
        values = {value for trial, value in scored if fitting_params(trial, spec) is not None}
        if len(values) < 2:
            logger.info("note: no parameter importances: every trial has the same %s", objective.metric)
            return {}
        return {next(iter(spec.search.space)): 1.0}
    return _fanova(spec, objective, _fitted(spec, _sample(scored, log=True)))


def branch_importances(
    spec: Spec, scored: list[tuple[RecordedTrial, float]], objective: Objective | None = None
) -> dict[str, float]:
    """Each conditional parameter's fANOVA importance within its branch: its share of the
    variance of the objective among the trials where it is active (fitted on the parameters
    that vary among them, its parents pinned by its `when` left out). Parameters active in the
    same trials share one fit. Most important first; none for a parameter active in fewer than
    BRANCH_TRIALS trials, or in every trial (then `importances` has it)."""
    objective = objective or Objective(spec.metric, spec.mode)
    conditional = [name for name, domain in spec.search.space.items() if conditions(domain)]
    if not conditional:
        return {}
    fitted = _fitted(spec, _sample(scored, log=False))
    branches: dict[tuple[int, ...], list[str]] = {}
    for name in conditional:
        members = tuple(i for i, (params, _) in enumerate(fitted) if name in params)
        branches.setdefault(members, []).append(name)
    found: dict[str, float] = {}
    for members, names in branches.items():
        if len(members) == len(fitted):
            continue  # active in every trial: among the parameters every trial holds
        if len(members) < BRANCH_TRIALS:
            logger.info(
                "note: no importance within its branch for %s: active in %d trials, %d needed",
                ", ".join(names),
                len(members),
                BRANCH_TRIALS,
            )
            continue
        rows = [fitted[i] for i in members]
        varying = [
            name
            for name in spec.search.space
            if all(name in params for params, _ in rows) and len({str(params[name]) for params, _ in rows}) > 1
        ]
        rows = [({name: params[name] for name in varying}, value) for params, value in rows]
        within = _fanova(spec, objective, rows)
        found.update({name: within[name] for name in names if name in within})
    return dict(sorted(found.items(), key=lambda item: -item[1]))


def _sample(scored: list[tuple[RecordedTrial, float]], log: bool) -> list[tuple[RecordedTrial, float]]:
    """The trials fANOVA is fitted on: a seeded sample of IMPORTANCE_TRIALS in a larger job."""
    if len(scored) <= IMPORTANCE_TRIALS:
        return scored
    if log:
        logger.info(
            "note: parameter importances are estimated from %d of the %d trials, drawn at random",
            IMPORTANCE_TRIALS,
            len(scored),
        )
    return random.Random(0).sample(scored, IMPORTANCE_TRIALS)


def _fitted(spec: Spec, scored: list[tuple[RecordedTrial, float]]) -> list[tuple[dict[str, Any], float]]:
    """The trials' active parameters in the spec's space, with their values; those that do not
    fit the space are left out."""
    return [(params, value) for trial, value in scored if (params := fitting_params(trial, spec)) is not None]


def _fanova(spec: Spec, objective: Objective, rows: list[tuple[dict[str, Any], float]]) -> dict[str, float]:
    """fANOVA over the parameters every row holds, shares summing to 1, most important first."""
    if len(rows) < 2 or not any(params for params, _ in rows):
        return {}
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    quiet_optuna()
    dists = distributions(spec)
    study = optuna.create_study(direction=direction(objective.mode))
    for params, value in rows:
        study.add_trial(
            optuna.trial.create_trial(value=value, params=params, distributions={name: dists[name] for name in params})
        )
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(n_trees=TREES, seed=0))
    except (RuntimeError, ValueError) as err:  # e.g. every trial has the same value
        logger.info("note: no parameter importances for %s: %s", objective.metric, err)
        return {}
    return {name: float(value) for name, value in found.items() if math.isfinite(value)}
