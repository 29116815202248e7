"""Tables as users have them: a CSV or Parquet file of numeric, categorical, text and boolean
columns with gaps, turned into the float matrix an MLP trains on, and back again at serving.

The encoding, fitted on the training split only (`TableEncoding.fit`):

- numeric column: standardized with the training mean and standard deviation; a gap becomes
  the mean (0 after scaling), and a column with gaps in training gets a 0/1 missing indicator;
- categorical column (text, boolean, or named in `categorical`): its values seen at least
  `MIN_COUNT` times in training get a slot each, a gap is a category of its own, and everything
  else (rare in training, or new at prediction time) shares slot 0, "unknown", which the rare
  training values teach. Up to `max_onehot` slots the column is one-hot; above, it is one code
  column that the model's `TableInput` turns into a learned embedding.

The matrix is laid out dense part first (numbers, indicators, one-hot blocks), then one code
column per embedded column, so the whole table travels as one float32 tensor (codes are exact
in float32 far beyond any vocabulary here).

A served model takes the raw table: `TablePredictor` encodes it with the fitted encoding, runs
the network and returns probabilities, so a user sends the same rows their file has.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from torch import nn

from trainables.files import DataError
from trainables.loop import Dataset

# A category needs this many training rows for a slot of its own; rarer ones share "unknown".
MIN_COUNT = 2
MAX_ONEHOT = 16
# A mostly numeric column with a few values that are not numbers is a broken file, not text.
NUMERIC_SHARE = 0.95
# Fewer rows than this and "every value differs" says nothing about a column being an id.
ID_MIN_ROWS = 20
UNKNOWN = 0


# --- Reading -----------------------------------------------------------------------------------


def table_format(path: str | Path) -> str:
    """`parquet` for .parquet/.pq files, else `csv` (also .csv.gz and the like)."""
    return "parquet" if Path(path).suffix.lower() in (".parquet", ".pq") else "csv"


def table_columns(path: str | Path) -> list[str]:
    """The column names of a table file, reading no rows."""
    path = Path(path).expanduser()
    try:
        if table_format(path) == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception as err:  # noqa: BLE001 - any reader fault is the file's
        raise DataError(f"{path}: {reader_fault(err)}") from None


def read_table(path: str | Path, na_values: list[str] | None = None) -> pd.DataFrame:
    """The whole table; a file that cannot be read is a `DataError` naming it, and the line
    where the CSV parser stopped."""
    path = Path(path).expanduser()
    try:
        if table_format(path) == "parquet":
            frame = pd.read_parquet(path)
            if na_values:
                frame = frame.replace(na_values, np.nan)
        else:
            # Strings with surrounding spaces (UCI's ", " separators) are the same category.
            frame = pd.read_csv(path, na_values=na_values or None, skipinitialspace=True, low_memory=False)
    except Exception as err:  # noqa: BLE001 - any reader fault is the file's
        raise DataError(f"{path}: {reader_fault(err)}") from None
    if frame.empty:
        raise DataError(f"{path}: the table has no rows")
    return frame


def reader_fault(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    # pandas' C parser: "Error tokenizing data. C error: Expected 3 fields in line 7, saw 4"
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if fields:
        expected, line, saw = fields.groups()
        return f"line {line}: {saw} fields where the first line has {expected}"
    if isinstance(err, pd.errors.EmptyDataError):
        return "the file is empty"
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.start}); save the table as UTF-8"
    return text


def line_of(row_label: Any) -> int:
    """The CSV line of a row: the header is line 1 (a quoted field spanning lines moves it)."""
    return int(row_label) + 2


# --- Choosing columns --------------------------------------------------------------------------


@dataclass
class Selection:
    """Which columns feed the model, how each is read, and the notes worth printing."""

    numeric: list[str]
    categorical: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def select_columns(
    frame: pd.DataFrame,
    target: str,
    features: list[str] | None = None,
    drop: list[str] | None = None,
    categorical: list[str] | None = None,
    source: str = "the table",
) -> Selection:
    """The feature columns and their kinds. `features` names them outright; otherwise every
    column but the target and `drop`, less id-like ones (`_id_like`), each dropped with a note."""
    named = set(features or [])
    unknown = [c for c in [*(features or []), *(drop or []), *(categorical or [])] if c not in frame.columns]
    if unknown:
        raise DataError(f"{source} has no column {', '.join(map(repr, unknown))}")
    columns = list(features) if features else [c for c in frame.columns if c != target and c not in set(drop or [])]
    if target in columns:
        raise DataError(f"the target {target!r} cannot also be a feature")
    selection = Selection([], [])
    for column in columns:
        values = frame[column]
        if column not in named and _id_like(values):
            selection.notes.append(
                f"note: data: column {column!r} has a different value in every row (an id?), so it is "
                "not used; name it in data.features to use it"
            )
        elif column in set(categorical or []) or not _is_numeric(values, column, source):
            selection.categorical.append(column)
        else:
            selection.numeric.append(column)
    if not selection.columns:
        raise DataError(f"{source} has no feature columns besides the target {target!r}")
    return selection


def _id_like(values: pd.Series) -> bool:
    """Text with a different value in every row, or integers that also only ever go up (row
    numbers, sequence ids). Unique floats are measurements; unique unordered integers may be too."""
    if len(values) < ID_MIN_ROWS or not values.notna().all() or values.nunique() < len(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        return bool(values.is_monotonic_increasing)
    return not (pd.api.types.is_float_dtype(values) or pd.api.types.is_bool_dtype(values))


def _is_numeric(values: pd.Series, column: str, source: str) -> bool:
    """True for a numeric column. A text column whose values are nearly all numbers has a typo
    somewhere: that is an error naming its first line, not a silent switch to categories."""
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    present = values.dropna()
    parsed = pd.to_numeric(present, errors="coerce")
    if len(present) and parsed.notna().mean() >= NUMERIC_SHARE:
        bad = parsed[parsed.isna()].index[0]
        raise DataError(
            f"{source}: line {line_of(bad)}, column {column!r}: {present[bad]!r} is not a number, though "
            f"{int(parsed.notna().sum())} of its {len(present)} values are; fix the value, list it in "
            "data.na_values to read it as missing, or name the column in data.categorical"
        )
    return False


# --- The target --------------------------------------------------------------------------------


def target_labels(values: pd.Series, target: str, source: str) -> tuple[np.ndarray, list[str]]:
    """Class indices (sorted class order) and the class names as text; a continuous or
    single-class target is a `DataError`."""
    if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values.to_numpy(), 1) == 0):
        raise DataError(
            f"{source}: the target {target!r} has fractional values ({values.nunique()} distinct); "
            "this is a classifier and needs class labels"
        )
    codes, uniques = pd.factorize(values, sort=True)
    classes = [category_text(v) for v in uniques]
    if len(classes) < 2:
        raise DataError(
            f"{source}: the target {target!r} has one class ({', '.join(classes) or 'none'}); a classifier needs two"
        )
    return codes.astype(np.int64), classes


def drop_missing_target(frame: pd.DataFrame, target: str, source: str) -> tuple[pd.DataFrame, list[str]]:
    missing = frame[target].isna()
    if not missing.any():
        return frame, []
    note = f"note: data: {int(missing.sum())} rows of {source} have no {target!r} and are left out"
    return frame[~missing], [note]


# --- The encoding ------------------------------------------------------------------------------


def category_text(value: Any) -> str | None:
    """One spelling per category whatever its type on the way in: None for a gap, `True`
    for a boolean, `7` for 7 and 7.0, text as it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value).strip()


def _category_texts(values: pd.Series) -> list[str | None]:
    return [category_text(v) for v in values.tolist()]


def numbers(values: pd.Series) -> np.ndarray:
    """A numeric column as float64 whatever dtype it arrives in: int64 (`pd.read_csv` of whole
    numbers), float, nullable `Int64`/`Float64`/`boolean`, `category`, text of numbers or objects
    (JSON rows); a gap, or a value that is not a number, is NaN."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    # na_value: pandas 2 refuses to turn a nullable column with gaps into floats without it.
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def embedding_size(slots: int) -> int:
    """fast.ai's rule of thumb, capped: about 1.6 * slots ** 0.56."""
    return max(2, min(16, round(1.6 * slots**0.56)))


@dataclass
class TableEncoding:
    """The fitted encoding; `to_dict` is what checkpoints and the served model keep."""

    numeric: list[dict[str, Any]]  # {name, mean, std, indicator}
    categorical: list[dict[str, Any]]  # {name, categories (None: the gap), onehot}

    @classmethod
    def fit(cls, frame: pd.DataFrame, selection: Selection, max_onehot: int = MAX_ONEHOT) -> TableEncoding:
        numeric = []
        for name in selection.numeric:
            values = pd.Series(numbers(frame[name]))
            mean = float(values.mean()) if values.notna().any() else 0.0
            std = float(values.std(ddof=0)) if values.notna().sum() > 1 else 1.0
            numeric.append(
                {"name": name, "mean": mean, "std": std if std > 1e-12 else 1.0, "indicator": bool(values.isna().any())}
            )
        categorical = []
        for name in selection.categorical:
            counts = pd.Series(_category_texts(frame[name]), dtype=object).value_counts(dropna=False)
            kept = [c if isinstance(c, str) else None for c, n in counts.items() if n >= MIN_COUNT]
            kept.sort(key=lambda c: (c is None, c or ""))
            categorical.append({"name": name, "categories": kept, "onehot": len(kept) + 1 <= max_onehot})
        return cls(numeric, categorical)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableEncoding:
        return cls(data["numeric"], data["categorical"])

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical}

    @property
    def columns(self) -> list[str]:
        return [c["name"] for c in self.numeric] + [c["name"] for c in self.categorical]

    @property
    def dense_width(self) -> int:
        width = sum(1 + c["indicator"] for c in self.numeric)
        return width + sum(len(c["categories"]) + 1 for c in self.categorical if c["onehot"])

    @property
    def embeddings(self) -> list[tuple[int, int]]:
        """(slots, size) of each embedded column, in matrix order."""
        slots = [len(c["categories"]) + 1 for c in self.categorical if not c["onehot"]]
        return [(n, embedding_size(n)) for n in slots]

    def slots(self, frame: pd.DataFrame, column: dict[str, Any]) -> np.ndarray:
        """Each row's slot in a categorical column: 1.. for kept categories, 0 for unknown."""
        index = {category: slot for slot, category in enumerate(column["categories"], start=1)}
        return np.array([index.get(c, UNKNOWN) for c in _category_texts(frame[column["name"]])], dtype=np.int64)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"the table lacks the column(s) {', '.join(map(repr, missing))}")
        rows = len(frame)
        parts: list[np.ndarray] = []
        for column in self.numeric:
            values = numbers(frame[column["name"]])
            gaps = np.isnan(values)
            parts.append(np.where(gaps, 0.0, (values - column["mean"]) / column["std"])[:, None])
            if column["indicator"]:
                parts.append(gaps[:, None].astype(np.float64))
        codes = []
        for column in self.categorical:
            slots = self.slots(frame, column)
            if column["onehot"]:
                parts.append(np.eye(len(column["categories"]) + 1)[slots])
            else:
                codes.append(slots[:, None].astype(np.float64))
        return np.concatenate([*parts, *codes] or [np.zeros((rows, 0))], axis=1).astype(np.float32)

    def one_hot(self, matrix: np.ndarray) -> np.ndarray:
        """The matrix with every embedded column one-hot too: what a linear model gets."""
        dense = matrix[:, : self.dense_width]
        codes = matrix[:, self.dense_width :].astype(np.int64)
        blocks = [np.eye(slots)[codes[:, i]] for i, (slots, _) in enumerate(self.embeddings)]
        return np.concatenate([dense, *blocks], axis=1)

    def example(self, frame: pd.DataFrame, rows: int = 5) -> dict[str, Any]:
        """A few raw rows as JSON-ready records of the served columns: two with gaps when the
        table has some, so the example shows how a gap is sent, the rest complete."""
        columns = self.columns
        part = frame[columns]
        gaps = part.isna().any(axis=1).to_numpy()
        order = [*np.flatnonzero(gaps)[:2], *np.flatnonzero(~gaps)][:rows]
        picked = self.raw_frame(part.iloc[order])
        data = [[None if pd.isna(v) else v for v in row] for row in picked.astype(object).to_numpy().tolist()]
        return {"columns": columns, "data": data}

    def raw_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The served form of raw rows, as the model's input example shows them: numbers as
        doubles (a gap is NaN), categories as text (a gap is None). The model takes other forms
        too (`TablePredictor`)."""
        out = pd.DataFrame(index=frame.index)
        for column in self.numeric:
            out[column["name"]] = pd.Series(numbers(frame[column["name"]]), index=frame.index)
        for column in self.categorical:
            out[column["name"]] = pd.Series(_category_texts(frame[column["name"]]), index=frame.index, dtype=object)
        return out

    def example_frame(self, example: dict[str, Any]) -> pd.DataFrame:
        return self.raw_frame(pd.DataFrame(example["data"], columns=example["columns"]))


# --- The model's side ---------------------------------------------------------------------------


class TableInput(nn.Module):
    """The encoded matrix in, the network's input out: the dense part as it is, each code column
    through its own embedding."""

    def __init__(self, dense_width: int, embeddings: list[tuple[int, int]]):
        super().__init__()
        self.dense_width = dense_width
        self.embeddings = nn.ModuleList(nn.Embedding(slots, size) for slots, size in embeddings)
        self.width = dense_width + sum(size for _, size in embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.embeddings):
            return x
        codes = x[:, self.dense_width :].long()
        embedded = [embedding(codes[:, i]) for i, embedding in enumerate(self.embeddings)]
        return torch.cat([x[:, : self.dense_width], *embedded], dim=1)


class TablePredictor:
    """What the registry serves for a table model: raw rows (a DataFrame with the file's
    columns, strings and gaps included) in, probabilities out. A column may come in any dtype
    pandas or JSON gives it (int64 or float numbers, nullable `Int64`, `boolean`, `string`,
    `category`, objects): `numbers` and `category_text` read each value, so the same values give
    the same probabilities whatever the dtype.

    `outputs` names the result columns: one per class (softmax), or a single
    `probability` of the positive class (sigmoid over one logit).
    """

    def __init__(self, model: nn.Module, encoding: dict[str, Any], outputs: list[str]):
        self.model = model.eval()
        self.encoding = encoding
        self.outputs = outputs

    def __call__(self, model_input: pd.DataFrame) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        matrix = TableEncoding.from_dict(self.encoding).transform(frame)
        with torch.no_grad():
            logits = self.model(torch.from_numpy(matrix))
        if len(self.outputs) == 1:
            probabilities = torch.sigmoid(logits.reshape(-1, 1))
        else:
            probabilities = torch.softmax(logits, dim=1)
        return pd.DataFrame(probabilities.numpy().astype(np.float64), columns=self.outputs, index=frame.index)


# --- The data block and the dataset --------------------------------------------------------------


class TableOptions(BaseModel):
    """The `data` keys every table trainable takes for a file of the user's."""

    path: str | None = None
    target: str | None = None
    features: list[str] | None = None  # use only these columns
    drop: list[str] = Field(default_factory=list)  # never use these
    categorical: list[str] = Field(default_factory=list)  # numbers that are really codes (zip, store id)
    na_values: list[str] = Field(default_factory=list)  # extra spellings of a gap, e.g. "?"
    max_onehot: int = Field(default=MAX_ONEHOT, ge=2)  # more slots than this: an embedding

    def check_table(self, what: str) -> None:
        """The file exists and has the target and every column the block names."""
        if not self.path:
            raise ValueError(f"path: required for dataset {what!r}")
        if not Path(self.path).expanduser().is_file():
            raise ValueError(f"path: file does not exist: {self.path}")
        if not self.target:
            raise ValueError("target: required: the label column")
        columns = set(table_columns(self.path))
        if self.target not in columns:
            raise ValueError(f"target: column {self.target!r} is not in {self.path}")
        for key in ("features", "drop", "categorical"):
            absent = [c for c in getattr(self, key) or [] if c not in columns]
            if absent:
                raise ValueError(f"{key}: {self.path} has no column {', '.join(map(repr, absent))}")

    def read(self) -> tuple[pd.DataFrame, Selection]:
        """The file's rows that have a target, and the columns chosen from it."""
        frame = read_table(self.path, self.na_values)
        source = str(self.path)
        frame, notes = drop_missing_target(frame, self.target, source)
        selection = select_columns(frame, self.target, self.features, self.drop, self.categorical, source)
        selection.notes[:0] = notes
        return frame, selection


def table_dataset(
    frame: pd.DataFrame,
    selection: Selection,
    labels: np.ndarray,
    rows: dict[str, np.ndarray],
    info: dict[str, Any],
    max_onehot: int = MAX_ONEHOT,
) -> Dataset:
    """Train/validation/test tensors of a table split by `rows`, the encoding fitted on the
    training rows only; `info` gains the encoding, a raw serving example and the notes."""
    encoding = TableEncoding.fit(frame.iloc[rows["train"]], selection, max_onehot)
    x = {part: torch.from_numpy(encoding.transform(frame.iloc[index])) for part, index in rows.items()}
    y = {part: torch.from_numpy(labels[index]) for part, index in rows.items()}
    info = {
        **info,
        "feature_names": encoding.columns,
        "table": encoding.to_dict(),
        "example": encoding.example(frame.iloc[rows["val"]]),
        "notes": selection.notes,
    }
    return Dataset(x["train"], y["train"], x["val"], y["val"], info, x["test"], y["test"])


def table_input(info: dict[str, Any]) -> TableInput:
    encoding = TableEncoding.from_dict(info["table"])
    return TableInput(encoding.dense_width, encoding.embeddings)


def raw_example(data: Dataset) -> pd.DataFrame:
    """A few raw validation rows as the table the served model takes, gaps included."""
    return TableEncoding.from_dict(data.info["table"]).example_frame(data.info["example"])
