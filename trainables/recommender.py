"""Implicit-feedback recommender: neural collaborative filtering (NeuMF: GMF + MLP towers).

Default data: a seeded synthetic generator (users and items with latent factors, a skewed
item popularity, timestamps). Real data: MovieLens from a local path (`ml-100k/u.data`,
`ml-1m/ratings.dat`, `ml-latest-small/ratings.csv`, or their folders), every rating taken as
an implicit interaction.

Evaluation follows the NCF protocol: each user's latest interaction is held out and ranked
among 99 items the user never interacted with. Those negatives are drawn once with a fixed
seed, so every trial of a job is ranked on the same candidates. Training sees the remaining
positives plus `num_negatives` freshly sampled negatives per positive each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from trainables.cost import COST_METRICS
from trainables.files import DataError
from trainables.loop import Batches, Dataset, LossFn, Task, predict, run_trial, shuffled_batches
from trainables.metrics import ranking_metrics
from trainables.tables import reader_fault

METRICS = ("val_ndcg_at_10", "val_hit_rate_at_10", "val_loss", "train_loss", "epoch", *COST_METRICS)
TOP_K = 10
EVAL_NEGATIVES = 99
# File names of the MovieLens releases, and how each is laid out.
MOVIELENS_FILES = {
    "u.data": {"sep": "\t", "header": None},
    "ratings.dat": {"sep": "::", "header": None, "engine": "python"},
    "ratings.csv": {"sep": ",", "header": 0},
}
SMOKE_USERS = 300


class DataConfig(BaseModel):
    """The spec's `data` block for this trainable."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["synthetic", "movielens"] = "synthetic"
    path: str | None = None  # movielens: a ratings file named as above, or the folder holding it
    # synthetic only
    num_users: int = Field(default=2000, ge=10)
    num_items: int = Field(default=1000, ge=EVAL_NEGATIVES + 21)
    seed: int = 0
    smoke: bool = False

    @model_validator(mode="after")
    def _movielens_needs_a_file(self) -> DataConfig:
        if self.dataset == "movielens":
            if not self.path:
                raise ValueError(
                    "path: required for dataset 'movielens': a ratings file (u.data, ratings.dat, "
                    "ratings.csv) or the folder holding it"
                )
            movielens_file(self.path)  # raises with the reason
        return self


def movielens_file(path: str) -> Path:
    """The ratings file at `path`, which may name the file or its extracted folder."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        found = [candidate / name for name in MOVIELENS_FILES if (candidate / name).is_file()]
        if not found:
            raise ValueError(f"path: no {', '.join(MOVIELENS_FILES)} in folder {path}")
        return found[0]
    if not candidate.is_file():
        raise ValueError(f"path: file does not exist: {path}")
    if candidate.name not in MOVIELENS_FILES:
        expected = ", ".join(MOVIELENS_FILES)
        raise ValueError(f"path: expected a MovieLens ratings file ({expected}), got {candidate.name}")
    return candidate


def read_movielens(path: str) -> pd.DataFrame:
    """user_id, item_id, timestamp as integers; a broken line is a `DataError` naming the file,
    the line and the column."""
    file = movielens_file(path)
    options = MOVIELENS_FILES[file.name]
    try:
        frame = pd.read_csv(file, **options)
    except Exception as err:  # noqa: BLE001 - any reader fault is the file's
        raise DataError(f"{file}: {reader_fault(err)}") from None
    if frame.shape[1] < 4:
        raise DataError(f"{file}: {frame.shape[1]} columns where MovieLens ratings have 4 (user, item, rating, time)")
    frame = frame.iloc[:, :4]
    frame.columns = ["user_id", "item_id", "rating", "timestamp"]
    first_line = 2 if options["header"] == 0 else 1
    for column in ("user_id", "item_id", "timestamp"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values % 1 != 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{file}: line {row + first_line}, column {column}: {frame[column].iloc[row]!r} is not a whole number"
            )
        frame[column] = values
    return frame[["user_id", "item_id", "timestamp"]].astype("int64")


def generate_interactions(num_users: int, num_items: int, seed: int, latent_dim: int = 8) -> pd.DataFrame:
    """Seeded implicit feedback with structure to learn.

    Users and items get latent factors; an item's appeal to a user is their dot product plus
    a skewed (Zipf-like) popularity. Each user picks between 5 and 200 distinct items (about 20
    on average) by sampling from that appeal (the Gumbel top-k trick), at increasing times, so
    the latest pick is one more draw from the same taste. The strengths are set so that a
    popularity ranking scores about like it does on MovieLens-1M (hit rate at 10 near 0.45).
    """
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(num_users, latent_dim))
    items = rng.normal(size=(num_items, latent_dim))
    popularity = -0.8 * np.log(rng.permutation(num_items) + 1.0)
    appeal = 2.5 * users @ items.T / np.sqrt(latent_dim) + popularity
    picks = np.clip(4 + rng.geometric(1 / 16, size=num_users), 5, min(200, num_items - EVAL_NEGATIVES - 1))
    noisy = appeal + rng.gumbel(size=appeal.shape)
    frames = []
    for user in range(num_users):
        chosen = rng.permutation(np.argpartition(-noisy[user], picks[user])[: picks[user]])
        times = rng.uniform(8.8e8, 9.5e8) + np.cumsum(rng.exponential(86_400, size=len(chosen)))
        frames.append(pd.DataFrame({"user_id": user + 1, "item_id": chosen + 1, "timestamp": times.astype("int64")}))
    return pd.concat(frames, ignore_index=True)


@dataclass
class RankingSplit:
    """The NCF split on item and user indices: training pairs (n, 2); for validation and test,
    candidate rows (users, 1 + 99) with the held-out item in column 0, and the users of those
    rows; the raw user and item ids in index order."""

    pairs: np.ndarray
    val_candidates: np.ndarray
    val_users: np.ndarray
    test_candidates: np.ndarray
    test_users: np.ndarray
    user_ids: list[int]
    item_ids: list[int]


def leave_latest_out(interactions: pd.DataFrame, seed: int) -> RankingSplit:
    """Each user's latest item is the test item, the latest before it the validation item,
    the rest trains (He et al. 2017 hold out the latest for testing; validation is taken the
    same way from what remains, so no trial ever sees a test item).

    A user needs two interactions to give a test item and three to give a validation item too;
    a user with one only trains. A user needs at least 99 untouched items to be ranked.
    """
    frame = interactions.drop_duplicates(["user_id", "item_id"], keep="last").reset_index(drop=True)
    user_index, user_ids = pd.factorize(frame["user_id"], sort=True)
    item_index, item_ids = pd.factorize(frame["item_id"], sort=True)
    frame = frame.assign(user=user_index, item=item_index)
    # Stable sort: ties in time keep file order, so the split never depends on the sort algorithm.
    frame = frame.sort_values(["user", "timestamp"], kind="stable")
    num_items = len(item_ids)
    if num_items < EVAL_NEGATIVES + 1:
        raise DataError(f"the data has {num_items} items; ranking needs at least {EVAL_NEGATIVES + 1}")
    rng = np.random.default_rng(seed)
    seen = frame.groupby("user")["item"].agg(set)
    test = _latest_rankable(frame, seen, num_items)
    rest = frame.drop(test.index)
    val = _latest_rankable(rest, seen, num_items)
    train = rest.drop(val.index)
    # Copies: pandas hands out read-only views, which torch warns about.
    return RankingSplit(
        pairs=train[["user", "item"]].to_numpy(dtype=np.int64, copy=True),
        val_candidates=_candidates(val, seen, num_items, rng),
        val_users=val["user"].to_numpy(dtype=np.int64, copy=True),
        test_candidates=_candidates(test, seen, num_items, rng),
        test_users=test["user"].to_numpy(dtype=np.int64, copy=True),
        user_ids=list(map(int, user_ids)),
        item_ids=list(map(int, item_ids)),
    )


def _latest_rankable(frame: pd.DataFrame, seen: pd.Series, num_items: int) -> pd.DataFrame:
    """Each user's latest row, for users with another row left to train on and 99 untouched items."""
    counts = frame.groupby("user")["item"].transform("size")
    latest = frame.groupby("user").tail(1)
    latest = latest[counts.loc[latest.index] >= 2]
    # A user who touched all but a few items cannot be ranked against 99 unseen ones; they
    # still train, they are just not evaluated.
    rankable = [num_items - len(seen[user]) >= EVAL_NEGATIVES for user in latest["user"]]
    return latest[np.array(rankable, dtype=bool)]


def _candidates(held_out: pd.DataFrame, seen: pd.Series, num_items: int, rng: np.random.Generator) -> np.ndarray:
    """The held-out item and 99 fixed items the user never touched, per held-out row."""
    candidates = np.empty((len(held_out), EVAL_NEGATIVES + 1), dtype=np.int64)
    for row, (user, item) in enumerate(zip(held_out["user"], held_out["item"], strict=True)):
        excluded = seen[user]
        negatives: list[int] = []
        while len(negatives) < EVAL_NEGATIVES:
            for draw in rng.integers(0, num_items, size=2 * EVAL_NEGATIVES):
                if draw not in excluded and draw not in negatives:
                    negatives.append(int(draw))
                    if len(negatives) == EVAL_NEGATIVES:
                        break
        candidates[row] = [item, *negatives]
    return candidates


def _ranking_rows(users: np.ndarray, candidates: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) rows of every candidate, and labels: 1 for the held-out item."""
    x = torch.stack(
        [torch.from_numpy(users)[:, None].expand(candidates.shape), torch.from_numpy(candidates)], dim=2
    ).reshape(-1, 2)
    y = torch.zeros(candidates.shape, dtype=torch.float32)
    y[:, 0] = 1.0
    return x, y.reshape(-1)


def load_data(data: dict[str, Any]) -> Dataset:
    cfg = DataConfig.model_validate(data)
    if cfg.dataset == "synthetic":
        users = SMOKE_USERS if cfg.smoke else cfg.num_users
        interactions = generate_interactions(users, cfg.num_items, cfg.seed)
    else:
        interactions = read_movielens(cfg.path)
        if cfg.smoke:
            keep = np.sort(interactions["user_id"].unique())[:SMOKE_USERS]
            interactions = interactions[interactions["user_id"].isin(keep)]
    split = leave_latest_out(interactions, cfg.seed)
    x_val, y_val = _ranking_rows(split.val_users, split.val_candidates)
    x_test, y_test = _ranking_rows(split.test_users, split.test_candidates)
    info = {
        "dataset": cfg.dataset,
        "num_users": len(split.user_ids),
        "num_items": len(split.item_ids),
        "num_candidates": EVAL_NEGATIVES + 1,
        # Raw ids in index order: the served model maps a user's ids through them.
        "user_ids": split.user_ids,
        "item_ids": split.item_ids,
    }
    pairs = torch.from_numpy(split.pairs)
    return Dataset(pairs, torch.ones(len(pairs)), x_val, y_val, info, x_test, y_test)


class NeuMF(nn.Module):
    """He et al. 2017: a GMF tower (element-wise product of embeddings) and an MLP tower over
    concatenated embeddings, fused by one linear layer into a logit per (user, item) pair."""

    def __init__(self, num_users: int, num_items: int, dim: int, num_layers: int, dropout: float):
        super().__init__()
        self.user_gmf, self.item_gmf = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        self.user_mlp, self.item_mlp = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        for embedding in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(embedding.weight, std=0.01)
        layers: list[nn.Module] = []
        width = 2 * dim
        for _ in range(num_layers):  # a tower that halves, as in the paper
            layers += [nn.Linear(width, max(width // 2, 8)), nn.ReLU(), nn.Dropout(dropout)]
            width = max(width // 2, 8)
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(dim + width, 1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        users, items = pairs[:, 0], pairs[:, 1]
        gmf = self.user_gmf(users) * self.item_gmf(items)
        mlp = self.mlp(torch.cat([self.user_mlp(users), self.item_mlp(items)], dim=1))
        return self.out(torch.cat([gmf, mlp], dim=1)).squeeze(1)


def build_model(config: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    return NeuMF(
        int(info["num_users"]),
        int(info["num_items"]),
        dim=int(config.get("embedding_dim", 32)),
        num_layers=int(config.get("num_layers", 2)),
        dropout=float(config.get("dropout", 0.0)),
    )


def bce_loss(config: dict[str, Any]) -> LossFn:
    return nn.BCEWithLogitsLoss()


def train_batches(data: Dataset, config: dict[str, Any], generator: torch.Generator) -> Batches:
    """The positives plus `num_negatives` new negatives each, shuffled into batches.

    A negative is an item the user has no known interaction with (the validation item included;
    the test item is never shown to a trial);
    collisions are redrawn a few times, and the rare survivors are dropped.
    """
    positives = data.x_train
    num_items = int(data.info["num_items"])
    held_out = data.x_val[data.y_val == 1]
    known = torch.sort(torch.cat([positives, held_out]) @ torch.tensor([num_items, 1])).values
    users = positives[:, 0].repeat(int(config.get("num_negatives", 4)))
    items = torch.randint(0, num_items, (len(users),), generator=generator)
    for _ in range(5):
        clash = torch.isin(users * num_items + items, known)
        if not clash.any():
            break
        items[clash] = torch.randint(0, num_items, (int(clash.sum()),), generator=generator)
    keep = ~torch.isin(users * num_items + items, known)
    x = torch.cat([positives, torch.stack([users[keep], items[keep]], dim=1)])
    y = torch.cat([torch.ones(len(positives)), torch.zeros(int(keep.sum()))])
    return shuffled_batches(x, y, int(config.get("batch_size", 256)), generator)


def evaluate(model: nn.Module, data: Dataset, loss_fn: LossFn, device: torch.device) -> dict[str, float]:
    logits = predict(model, data.x_val, device)
    val_loss = float(nn.functional.binary_cross_entropy_with_logits(logits, data.y_val))
    scores = logits.reshape(-1, int(data.info["num_candidates"]))
    return {"val_loss": val_loss, **ranking_metrics(scores, TOP_K)}


def popularity_baseline(data: Dataset) -> tuple[str, dict[str, float]]:
    """Rank the candidates by how often they were picked in training: the bar tuning must beat."""
    counts = torch.bincount(data.x_train[:, 1], minlength=int(data.info["num_items"])).double()
    candidates = data.x_val[:, 1].reshape(-1, int(data.info["num_candidates"]))
    return "popularity", ranking_metrics(counts[candidates], TOP_K)


class Scorer(nn.Module):
    """The served recommender: rows of raw (user_id, item_id) in, a 0..1 score per row out.

    Raw ids are mapped through the ids seen in training; an id the model never saw is a
    clear error instead of an index error deep inside an embedding.
    """

    def __init__(self, model: nn.Module, user_ids: list[int], item_ids: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("user_ids", torch.tensor(user_ids, dtype=torch.int64))
        self.register_buffer("item_ids", torch.tensor(item_ids, dtype=torch.int64))

    @staticmethod
    def _index(ids: torch.Tensor, known: torch.Tensor, column: str) -> torch.Tensor:
        raw = ids.round().long() if ids.is_floating_point() else ids.long()
        position = torch.searchsorted(known, raw).clamp(max=len(known) - 1)
        unknown = (known[position] != raw) | (ids != raw)
        if unknown.any():
            bad = sorted({float(v) for v in ids[unknown].tolist()})
            shown = ", ".join(str(int(v)) if v.is_integer() else str(v) for v in bad[:5])
            shown += ", ..." if len(bad) > 5 else ""
            raise ValueError(f"unknown {column} {shown}: the model knows {len(known)} {column}s from its training data")
        return position

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.ndim != 2 or rows.shape[1] != 2:
            raise ValueError(f"expected rows of (user_id, item_id), got shape {tuple(rows.shape)}")
        pairs = torch.stack(
            [self._index(rows[:, 0], self.user_ids, "user_id"), self._index(rows[:, 1], self.item_ids, "item_id")],
            dim=1,
        )
        return torch.sigmoid(self.model(pairs))


def serving_model(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    return Scorer(model, info["user_ids"], info["item_ids"]).eval()


def input_example(data: Dataset) -> pd.DataFrame:
    pairs = data.x_val[:5]
    return pd.DataFrame(
        {
            "user_id": [data.info["user_ids"][u] for u in pairs[:, 0].tolist()],
            "item_id": [data.info["item_ids"][i] for i in pairs[:, 1].tolist()],
        },
        dtype="int64",
    )


TASK = Task(
    load_data=load_data,
    build_model=build_model,
    loss_fn=bce_loss,
    evaluate=evaluate,
    serving_model=serving_model,
    input_example=input_example,
    train_batches=train_batches,
    baseline=popularity_baseline,
)


def train(config: dict[str, Any], data: Dataset | None = None) -> None:
    """Ray Tune trainable: one report and checkpoint per epoch."""
    run_trial(TASK, config, data)
