"""Parameter importances of a job's search: Optuna's fANOVA over the recorded trials."""

from __future__ import annotations

import logging
import math
import random

from tuning_platform.objectives import Objective
from tuning_platform.ranking import direction
from tuning_platform.search.study import RecordedTrial, distributions, fitting_params, quiet_optuna
from tuning_platform.spec import Spec

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


def importances(
    spec: Spec, scored: list[tuple[RecordedTrial, float]], objective: Objective | None = None
) -> dict[str, float]:
    """fANOVA importances of the searched parameters for the trials' values of one objective
    (default: the spec's metric), summing to 1, most important first; from a seeded sample of
    IMPORTANCE_TRIALS trials in a larger job."""
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
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    quiet_optuna()
    if len(scored) > IMPORTANCE_TRIALS:
        logger.info(
            "note: parameter importances are estimated from %d of the %d trials, drawn at random",
            IMPORTANCE_TRIALS,
            len(scored),
        )
        scored = random.Random(0).sample(scored, IMPORTANCE_TRIALS)
    dists = distributions(spec)
    study = optuna.create_study(direction=direction(objective.mode))
    for trial, value in scored:
        params = fitting_params(trial, spec)
        if params is not None:
            study.add_trial(
                optuna.trial.create_trial(
                    value=value, params=params, distributions={name: dists[name] for name in params}
                )
            )
    if len(study.trials) < 2:
        return {}
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(n_trees=TREES, seed=0))
    except (RuntimeError, ValueError) as err:  # e.g. every trial has the same value
        logger.info("note: no parameter importances for %s: %s", objective.metric, err)
        return {}
    return {name: float(value) for name, value in found.items() if math.isfinite(value)}
