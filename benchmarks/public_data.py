"""The built-in trainables on public data the user has on disk, against simple baselines
computed on the same split and encoding.

    python -m benchmarks.public_data --adult ~/data/adult.data            # UCI Adult (census income)
    python -m benchmarks.public_data --creditcard ~/data/creditcard.csv   # Kaggle credit-card fraud
    python -m benchmarks.public_data --movielens ~/data/ml-100k/u.data
    python -m benchmarks.public_data --mnist ~/data/mnist --fashion-mnist ~/data/fashion
    python -m benchmarks.public_data --cifar10 ~/data/cifar-10-batches-py
    python -m benchmarks.public_data --adult adult.data --baselines-only  # seconds, no tuning job

Nothing is downloaded: a data set whose path is not given is skipped with a line saying where
to get it. For each one given, the baselines are fitted on the training split and scored on
the validation and test splits the trainable itself uses (`load_data`, the same encoding):

- tables (`mlp`, and `fraud` on a table): logistic regression on the one-hot encoding, and
  scikit-learn's HistGradientBoostingClassifier (codes of embedded columns as categories) as
  the strong reference;
- recommendation: the popularity ranking;
- images: logistic regression on the pixels.

Then the shipped spec runs as a job (`--set` for the data, 2 CPUs) and its best trial's
validation metric, and its registered model's test score, are set beside them. Targets
(issue 15): Adult with `mlp`: best val_roc_auc >= logistic regression and within 0.02 of
gradient boosting; `fraud` on a table with categorical columns (Adult, `>50K` as the positive
class, when no other is given): val_auprc above logistic regression.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SPECS, job_request, parser, quiet, ray_running, run_platform, verdict, workdir

# UCI's adult.names: the 15 columns of adult.data, which has no header line.
ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
]  # fmt: skip
SOURCES = {
    "adult": "UCI Adult, https://archive.ics.uci.edu/dataset/2/adult (adult.data), or OpenML's adult.csv",
    "creditcard": "Kaggle, https://www.kaggle.com/datasets/mlg-ulb/creditcardfraud (creditcard.csv)",
    "movielens": "GroupLens, https://grouplens.org/datasets/movielens/ (ml-100k/u.data or ml-1m/ratings.dat)",
    "mnist": "http://yann.lecun.com/exdb/mnist/ (the four IDX files, .gz or not)",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist (the four IDX files)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)",
}


@dataclass
class Case:
    """One data set through one trainable."""

    name: str
    trainable: str
    data: dict[str, Any]
    baselines: Callable[[Any], dict[str, dict[str, float]]]  # dataset -> name -> {val, test}
    metric: str
    overrides: list[str] = field(default_factory=list)


# --- Baselines ----------------------------------------------------------------------------------


def _scores(score: Callable[[np.ndarray, np.ndarray], float], model: Any, x: Callable, data: Any) -> dict[str, float]:
    out = {"val": score(data.y_val.numpy(), model.predict_proba(x(data.x_val.numpy())))}
    if data.x_test is not None:
        out["test"] = score(data.y_test.numpy(), model.predict_proba(x(data.x_test.numpy())))
    return out


def table_baselines(score: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[Any], dict]:
    def fit(data: Any) -> dict[str, dict[str, float]]:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression

        from trainables.tables import TableEncoding

        encoding = TableEncoding.from_dict(data.info["table"])
        y = data.y_train.numpy()
        linear = LogisticRegression(max_iter=3000).fit(encoding.one_hot(data.x_train.numpy()), y)
        # The code columns of embedded features are categories to the trees (up to 255 slots).
        codes = [encoding.dense_width + i for i, (slots, _) in enumerate(encoding.embeddings) if slots <= 255]
        trees = HistGradientBoostingClassifier(categorical_features=codes or None, random_state=0)
        trees.fit(data.x_train.numpy(), y)
        return {
            "logistic_regression": _scores(score, linear, encoding.one_hot, data),
            "hist_gradient_boosting": _scores(score, trees, lambda x: x, data),
        }

    return fit


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr"))


def auprc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, probabilities[:, 1]))


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def pixel_baseline(max_rows: int) -> Callable[[Any], dict]:
    def fit(data: Any) -> dict[str, dict[str, float]]:
        from sklearn.linear_model import LogisticRegression

        flat = lambda x: x.reshape(len(x), -1)  # noqa: E731 - pixels as the readers give them, 0..1
        rows = min(max_rows, len(data.x_train))
        model = LogisticRegression(max_iter=300).fit(flat(data.x_train[:rows].numpy()), data.y_train[:rows].numpy())
        return {f"logistic_regression_pixels ({rows} rows)": _scores(accuracy, model, flat, data)}

    return fit


def popularity_baseline(data: Any) -> dict[str, dict[str, float]]:
    from trainables import recommender

    _, val = recommender.popularity_baseline(data)
    _, test = recommender.popularity_baseline(data.test_view())
    return {"popularity": {"val": val["val_ndcg_at_10"], "test": test["val_ndcg_at_10"]}}


# --- Data sets ----------------------------------------------------------------------------------


def adult_table(path: Path, folder: Path) -> Path:
    """UCI's adult.data has no header: a copy with the column names from adult.names. A file
    with a header (OpenML's, Kaggle's adult.csv) is used as it is."""
    first = path.read_text(errors="replace").splitlines()[0]
    if not first.split(",")[0].strip().isdigit():
        return path
    import pandas as pd

    frame = pd.read_csv(path, header=None, names=ADULT_COLUMNS, skipinitialspace=True)
    frame["income"] = frame["income"].str.rstrip(".")  # adult.test writes ">50K."
    copy = folder / "adult.csv"
    frame.to_csv(copy, index=False)
    return copy


def cases(args: Any, folder: Path) -> tuple[list[Case], list[str]]:
    chosen, skipped = [], []
    if args.adult:
        table = adult_table(Path(args.adult).expanduser(), folder)
        data = {"dataset": "csv", "path": str(table), "target": "income", "na_values": ["?"]}
        chosen.append(Case("adult", "mlp", data, table_baselines(roc_auc), "val_roc_auc"))
        chosen.append(Case("adult", "fraud", {**data, "positive": ">50K"}, table_baselines(auprc), "val_auprc"))
    if args.fraud_table:
        data = {"dataset": "csv", "path": args.fraud_table, "target": args.fraud_target}
        chosen.append(Case("fraud-table", "fraud", data, table_baselines(auprc), "val_auprc"))
    if args.creditcard:
        data = {"dataset": "csv", "path": args.creditcard}
        chosen.append(Case("creditcard", "fraud", data, table_baselines(auprc), "val_auprc"))
    if args.movielens:
        data = {"dataset": "movielens", "path": args.movielens}
        chosen.append(Case("movielens", "recommender", data, popularity_baseline, "val_ndcg_at_10"))
    for key, dataset in (("mnist", "mnist"), ("fashion_mnist", "fashion_mnist"), ("cifar10", "cifar10")):
        if getattr(args, key):
            data = {"dataset": dataset, "root": getattr(args, key)}
            chosen.append(Case(key, "cnn", data, pixel_baseline(args.pixel_rows), "val_accuracy"))
    for key in SOURCES:
        if not getattr(args, key, None):
            skipped.append(f"skipped: {key}: no --{key.replace('_', '-')} given ({SOURCES[key]})")
    return chosen, skipped


# --- The run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    for key in SOURCES:
        p.add_argument(f"--{key.replace('_', '-')}", help=SOURCES[key])
    p.add_argument("--fraud-table", help="any transactions table (CSV/Parquet) for the fraud detector")
    p.add_argument("--fraud-target", default="Class", help="its label column (default Class)")
    p.add_argument("--baselines-only", action="store_true", help="no tuning job: the baselines alone")
    p.add_argument("--trainable", choices=["mlp", "fraud", "recommender", "cnn"], help="only this trainable's cases")
    p.add_argument("--trials", type=int, help="search.num_samples of each job (default: the spec's)")
    p.add_argument("--pixel-rows", type=int, default=20_000, help="training rows of the pixel baseline")
    args = p.parse_args(argv)
    quiet()
    with workdir(args.workdir) as folder:
        chosen, skipped = cases(args, folder)
        chosen = [case for case in chosen if args.trainable in (None, case.trainable)]
        for line in skipped:
            print(line, flush=True)
        if not chosen:
            print("nothing to measure: give the path of at least one data set", flush=True)
            return 0
        passed = True
        with ray_running(args.cpus) if not args.baselines_only else contextlib.nullcontext():
            for case in chosen:
                passed &= measure(case, args, folder)
    return 0 if passed or args.smoke else 1


def measure(case: Case, args: Any, folder: Path) -> bool:
    from trainables import builtin

    module = builtin(case.trainable)
    print(f"\n== {case.name} through {case.trainable} ({case.metric}) ==", flush=True)
    started = time.perf_counter()
    data = module.load_data(case.data)
    baselines = case.baselines(data)
    print(f"baselines fitted in {time.perf_counter() - started:.1f}s", flush=True)
    print(f"{'model':42} {'validation':>10} {'test':>8}")
    for name, scores in baselines.items():
        print(f"{name:42} {scores['val']:10.4f} {scores.get('test', float('nan')):8.4f}", flush=True)
    if args.baselines_only:
        return True
    overrides = [f"data.{key}={_yaml(value)}" for key, value in case.data.items()]
    overrides += [f"search.num_samples={4 if args.smoke else args.trials}"] if args.smoke or args.trials else []
    overrides += ["scheduler.grace_period=1", "search.fixed.epochs=2"] if args.smoke else []
    spec = SPECS / f"{case.trainable}.yaml"
    request = job_request(spec, overrides, folder, f"{case.name}-{case.trainable}")
    outcome, seconds = run_platform(request)
    test_name = "test_" + case.metric.removeprefix("val_")
    test = (outcome.registration.test_metrics if outcome.registration else {}).get(test_name, float("nan"))
    label = f"platform: best of {len(outcome.rows)} trials ({seconds / 60:.1f} min)"
    print(f"{label:42} {outcome.best.value:10.4f} {test:8.4f}", flush=True)
    return targets(case, outcome.best.value, baselines, args.smoke)


def targets(case: Case, best: float, baselines: dict[str, dict[str, float]], smoke: bool) -> bool:
    linear = baselines.get("logistic_regression", {}).get("val")
    trees = baselines.get("hist_gradient_boosting", {}).get("val")
    ok = True
    if case.trainable == "mlp" and linear is not None:
        ok &= verdict(f"{case.name}: best {case.metric} - logistic regression", best - linear, 0.0, False, smoke=smoke)
        ok &= verdict(f"{case.name}: gradient boosting - best {case.metric}", trees - best, 0.02, True, smoke=smoke)
    elif case.trainable == "fraud" and linear is not None:
        ok &= verdict(f"{case.name}: best {case.metric} - logistic regression", best - linear, 0.0, False, smoke=smoke)
    return ok


def _yaml(value: Any) -> str:
    """A `--set` value: JSON is YAML, and quotes text such as `>50K` that YAML would misread."""
    import json

    return json.dumps(value)


if __name__ == "__main__":
    sys.exit(main())
