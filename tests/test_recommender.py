"""The recommender's data, split, negative sampling, served form and MovieLens loaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trainables import recommender
from trainables.files import DataError
from trainables.loop import make_optimizer, train_one_epoch


def _interactions() -> pd.DataFrame:
    """Users over 260 items; user 30 has one interaction, user 20 has a tie in time."""
    rows = [(10, item, 1000 + item) for item in (1, 2, 3, 4)]
    rows += [(20, 5, 50), (20, 6, 70), (20, 7, 70)]  # 6 and 7 tie: the later line is the latest
    rows += [(30, 8, 10)]
    rows += [(40, item, item) for item in range(9, 121)]  # heavy users, so that 260 items exist
    rows += [(50, item, item) for item in range(121, 261)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_leave_latest_out_tests_on_each_users_latest_item_and_validates_on_the_one_before():
    split = recommender.leave_latest_out(_interactions(), seed=0)
    ids, items = split.user_ids, split.item_ids

    def held_out(users, candidates):
        return {ids[u]: items[c] for u, c in zip(users, candidates[:, 0], strict=True)}

    assert held_out(split.test_users, split.test_candidates) == {10: 4, 20: 7, 40: 120, 50: 260}
    assert held_out(split.val_users, split.val_candidates) == {10: 3, 20: 6, 40: 119, 50: 259}
    train = {(ids[u], items[i]) for u, i in split.pairs}
    assert (30, 8) in train and (10, 4) not in train and (10, 3) not in train and (20, 5) in train
    assert len(train) == len(_interactions()) - 8  # user 30 has nothing to hold out


def test_evaluation_negatives_are_99_fixed_items_the_user_never_touched():
    frame = _interactions()
    split = recommender.leave_latest_out(frame, seed=0)
    again = recommender.leave_latest_out(frame, seed=0)
    assert np.array_equal(split.test_candidates, again.test_candidates)
    assert np.array_equal(split.val_candidates, again.val_candidates)
    for users, candidates in ((split.val_users, split.val_candidates), (split.test_users, split.test_candidates)):
        assert candidates.shape == (4, 100)
        for user, row in zip(users, candidates, strict=True):
            touched = set(frame.loc[frame.user_id == split.user_ids[user], "item_id"])
            negatives = [split.item_ids[i] for i in row[1:]]
            assert len(set(negatives)) == 99
            assert not touched & set(negatives)


def test_a_user_who_touched_almost_every_item_trains_but_is_not_evaluated():
    frame = pd.concat([_interactions(), pd.DataFrame({"user_id": 60, "item_id": range(1, 200), "timestamp": 5})])
    split = recommender.leave_latest_out(frame, seed=0)
    assert 60 not in {split.user_ids[u] for u in [*split.val_users, *split.test_users]}
    assert sum(split.user_ids[u] == 60 for u in split.pairs[:, 0]) == 199


def test_too_few_items_to_rank_is_a_clear_error():
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 2, 3], "timestamp": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="the data has 3 items; ranking needs at least 100"):
        recommender.leave_latest_out(frame, seed=0)


def test_synthetic_data_has_skewed_popularity_and_tens_of_thousands_of_interactions():
    frame = recommender.generate_interactions(2000, 1000, seed=0)
    assert 20_000 <= len(frame) <= 80_000
    assert frame.groupby("user_id").size().min() >= 5
    assert not frame.duplicated(["user_id", "item_id"]).any()
    counts = frame["item_id"].value_counts()
    assert counts.iloc[:100].sum() > 0.3 * len(frame)  # the top 10% of items: over 30% of picks
    assert frame.equals(recommender.generate_interactions(2000, 1000, seed=0))


@pytest.fixture(scope="module")
def smoke():
    """The smoke data, made once for the tests below, which only read it."""
    return recommender.load_data({"smoke": True})


def test_training_negatives_avoid_every_known_interaction(smoke):
    data = smoke
    num_items = data.info["num_items"]
    known = set((data.x_train @ torch.tensor([num_items, 1])).tolist())
    known |= set((data.x_val[data.y_val == 1] @ torch.tensor([num_items, 1])).tolist())
    batches = list(recommender.train_batches(data, {"num_negatives": 3, "batch_size": 500}, torch.Generator()))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert int(y.sum()) == len(data.x_train)
    negatives = x[y == 0]
    assert len(negatives) > 2.9 * len(data.x_train)
    assert not known & set((negatives @ torch.tensor([num_items, 1])).tolist())
    assert max(len(b[0]) for b in batches) == 500


def _scorer(data):
    model = recommender.build_model({"embedding_dim": 8}, data.info)
    return recommender.serving_model(model, data.info)


def test_served_model_scores_raw_ids_like_the_model_scores_indices(smoke):
    data, scorer = smoke, _scorer(smoke)
    example = recommender.input_example(data)
    assert list(example.columns) == ["user_id", "item_id"]
    scores = scorer(torch.tensor(example.to_numpy(dtype="float32")))
    expected = torch.sigmoid(scorer.model(data.x_val[:5]))
    assert torch.allclose(scores, expected)


@pytest.mark.parametrize(
    "row, message",
    [
        ([999_999, 1], "unknown user_id 999999: the model knows 300 user_ids"),
        ([1, 5_000], "unknown item_id 5000: the model knows"),
        ([1.5, 1], "unknown user_id 1.5"),
    ],
)
def test_unknown_ids_are_a_clear_error(smoke, row, message):
    scorer = _scorer(smoke)
    with pytest.raises(ValueError, match=message):
        scorer(torch.tensor([row], dtype=torch.float32))


def _write_movielens(frame: pd.DataFrame, folder, name: str):
    frame = frame.assign(rating=4)[["user_id", "item_id", "rating", "timestamp"]]
    path = folder / name
    if name == "u.data":
        frame.to_csv(path, sep="\t", header=False, index=False)
    elif name == "ratings.dat":
        path.write_text("".join("::".join(map(str, row)) + "\n" for row in frame.itertuples(index=False)))
    else:
        frame.rename(columns={"user_id": "userId", "item_id": "movieId"}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", ["u.data", "ratings.dat", "ratings.csv"])
def test_movielens_files_load_as_implicit_feedback(tmp_path, name):
    frame = recommender.generate_interactions(50, 200, seed=1)
    path = _write_movielens(frame, tmp_path, name)
    for where in (path, tmp_path):  # the file, or the folder it was extracted to
        data = recommender.load_data({"dataset": "movielens", "path": str(where)})
        assert data.info["num_users"] == 50
        assert len(data.x_train) == len(frame) - 100  # a test and a validation item per user
        assert data.info["user_ids"] == sorted(frame["user_id"].unique().tolist())


@pytest.mark.parametrize(
    "data, message",
    [
        ({"dataset": "movielens"}, "path: required for dataset 'movielens'"),
        ({"dataset": "movielens", "path": "/no/such/u.data"}, "path: file does not exist"),
        ({"dataset": "movielens", "path": "{tmp}"}, "path: no u.data, ratings.dat, ratings.csv in folder"),
        ({"dataset": "movielens", "path": "{tmp}/movies.csv"}, "expected a MovieLens ratings file"),
    ],
)
def test_movielens_config_errors_say_what_to_fix(tmp_path, data, message):
    (tmp_path / "movies.csv").write_text("movieId,title\n")
    data = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in data.items()}
    with pytest.raises(ValueError, match=message):
        recommender.DataConfig.model_validate(data)


@pytest.mark.parametrize(
    "name, spoil, message",
    [
        ("u.data", lambda t: t.replace("\n", "\nx7\t1\t4\t99\n", 1), r"u.data: line 2, column user_id: 'x7' is not"),
        (
            "ratings.csv",
            lambda t: t.replace("\n", "\n1,2,4,soon\n", 1),
            r"ratings.csv: line 2, column timestamp: 'soon'",
        ),
        ("ratings.dat", lambda t: t.replace("::", ";", 2), r"ratings.dat: line 2: 4 fields where the first line has 2"),
        ("u.data", lambda t: "", r"u.data: the file is empty"),
    ],
)
def test_a_broken_movielens_file_names_the_line_and_column(tmp_path, name, spoil, message):
    path = _write_movielens(recommender.generate_interactions(50, 200, seed=1), tmp_path, name)
    path.write_text(spoil(path.read_text()))
    with pytest.raises(DataError, match=message):
        recommender.load_data({"dataset": "movielens", "path": str(path)})


@pytest.mark.slow
def test_neumf_beats_popularity_by_half_again_on_the_default_data():
    """The bar the default search must clear, reached by one reasonable configuration."""
    data = recommender.load_data({})
    _, baseline = recommender.popularity_baseline(data)
    assert 0.2 < baseline["val_ndcg_at_10"] < 0.35  # popularity is a real competitor here
    torch.manual_seed(0)
    config = {"lr": 2e-3, "optimizer": "adam", "embedding_dim": 32, "batch_size": 256, "num_negatives": 4}
    model = recommender.build_model(config, data.info)
    optimizer = make_optimizer(model.parameters(), config)
    loss_fn = recommender.bce_loss(config)
    for epoch in range(4):
        batches = recommender.train_batches(data, config, torch.Generator().manual_seed(epoch))
        train_one_epoch(model, optimizer, loss_fn, batches, torch.device("cpu"))
    metrics = recommender.evaluate(model, data, loss_fn, torch.device("cpu"))
    assert metrics["val_ndcg_at_10"] > 1.5 * baseline["val_ndcg_at_10"]
