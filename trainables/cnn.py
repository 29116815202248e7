"""CNN image classifier.

Default data: scikit-learn's handwritten digits (1,797 real 8x8 images, shipped with the
package). MNIST and Fashion-MNIST (IDX files) and CIFAR-10 (python batches) are read with numpy
from a local `data.root` (`trainables/files.py`); nothing is downloaded unless
`data.download: true`, which fetches them with torchvision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from trainables.classification import (
    Normalize,
    check_fractions,
    cross_entropy,
    evaluate_classifier,
    smoke_subset,
    split_three_ways,
    stratified_split,
    with_probabilities,
)
from trainables.cost import COST_METRICS
from trainables.files import DataError, read_cifar10, read_image_folder, read_mnist
from trainables.loop import Dataset, Task, run_trial

METRICS = ("val_accuracy", "val_roc_auc", "val_loss", "train_loss", "epoch", *COST_METRICS)
TORCHVISION_DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
MIN_FOLDER_IMAGES = 5
# The label names of the sets whose files hold only numbers (the digits' are their own names).
CLASSES = {
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
SMOKE_TRAIN_ROWS, SMOKE_VAL_ROWS = 600, 300


class DataConfig(BaseModel):
    """The spec's `data` block for this trainable."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["digits", "mnist", "fashion_mnist", "cifar10", "image_folder"] = "digits"
    root: str | None = None  # folder holding the dataset's original files (see trainables/files.py)
    download: bool = False
    image_size: int = Field(default=32, ge=8, le=512)  # image_folder only: each image resized to this square
    # Validation rows are drawn from the training data; the test split is held out from every
    # trial and scores only the registered model: the official test files of MNIST, Fashion-MNIST
    # and CIFAR-10 (and root/test of an image folder), a `test_fraction` of the rows otherwise.
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)  # digits, image folders without root/test
    seed: int = 0
    smoke: bool = False

    @model_validator(mode="after")
    def _root_for_torchvision(self) -> DataConfig:
        check_fractions(self.val_fraction, self.test_fraction)
        if self.download and self.dataset == "image_folder":
            raise ValueError("download: an image folder is your own; there is nothing to download")
        if self.dataset != "digits" and not self.download:
            if self.root is None:
                raise ValueError(
                    f"root: required for dataset {self.dataset!r}: a folder with its original files "
                    "(IDX for MNIST and Fashion-MNIST, the python batches for CIFAR-10, root/CLASS/*.png for "
                    "an image folder), or set download: true"
                )
            if not Path(self.root).expanduser().is_dir():
                raise ValueError(f"root: folder does not exist for dataset {self.dataset!r}: {self.root}")
        return self


def load_data(data: dict[str, Any]) -> Dataset:
    cfg = DataConfig.model_validate(data)
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.float32)[:, None, :, :]  # N, 1, 8, 8; pixel values 0..16
        x_train, x_val, x_test, y_train, y_val, y_test = split_three_ways(
            images, digits.target, cfg.val_fraction, cfg.test_fraction, cfg.seed
        )
        classes = [str(c) for c in range(10)]
    elif cfg.dataset == "image_folder":
        x_all, y_all, x_test, y_test, classes = read_image_folder(cfg.root, cfg.image_size)
        counts = np.bincount(y_all, minlength=len(classes))
        if counts.min() < MIN_FOLDER_IMAGES:
            few = classes[int(counts.argmin())]
            raise DataError(
                f"{cfg.root}: class {few!r} has {counts.min()} images; each class needs {MIN_FOLDER_IMAGES} at "
                "least, to appear in the training, validation and test splits"
            )
        if x_test is None:  # no root/test: the test rows are drawn like digits'
            x_train, x_val, x_test, y_train, y_val, y_test = split_three_ways(
                x_all, y_all, cfg.val_fraction, cfg.test_fraction, cfg.seed
            )
        else:
            x_train, x_val, y_train, y_val = stratified_split(x_all, y_all, cfg.val_fraction, cfg.seed)
    else:
        x_official, y_official, x_test, y_test = _load_files(cfg)
        x_train, x_val, y_train, y_val = stratified_split(x_official, y_official, cfg.val_fraction, cfg.seed)
        classes = CLASSES.get(cfg.dataset, [str(c) for c in range(10)])
    if cfg.smoke:
        x_train, y_train = smoke_subset(x_train, y_train, SMOKE_TRAIN_ROWS, cfg.seed)
        x_val, y_val = smoke_subset(x_val, y_val, SMOKE_VAL_ROWS, cfg.seed)
        x_test, y_test = smoke_subset(x_test, y_test, SMOKE_VAL_ROWS, cfg.seed)
    mean = x_train.mean(axis=(0, 2, 3)).tolist()
    std = x_train.std(axis=(0, 2, 3)).tolist()
    info = {
        "dataset": cfg.dataset,
        "input_shape": list(x_train.shape[1:]),
        "num_classes": len(classes),
        "classes": classes,
        "mean": mean,
        "std": std,
    }
    images = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in (x_train, x_val, x_test)]
    labels = [torch.from_numpy(np.asarray(y, dtype=np.int64)) for y in (y_train, y_val, y_test)]
    return Dataset(images[0], labels[0], images[1], labels[1], info, images[2], labels[2])


def _load_files(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images, labels, then the official test split's, from the dataset's own files."""
    root = Path(cfg.root or "data").expanduser()
    if cfg.download:
        _download(cfg, root)
    if cfg.dataset == "cifar10":
        return read_cifar10(root)
    return read_mnist(root, cfg.dataset)


def _download(cfg: DataConfig, root: Path) -> None:
    """`download: true` only: torchvision fetches the original files into `root` (its layout,
    which the readers know). Off by default: nothing is downloaded unless asked."""
    try:
        import torchvision.datasets as tv
    except ImportError as err:
        raise DataError(f"data.download: true needs torchvision: pip install torchvision ({err})") from None
    cls = getattr(tv, TORCHVISION_DATASETS[cfg.dataset])
    for train in (True, False):
        cls(str(root), train=train, download=True)


class ConvNet(nn.Module):
    """Two conv blocks and a small classifier head; works for 8x8 up to 32x32 inputs."""

    def __init__(self, info: dict[str, Any], channels: int = 32, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        in_channels = int(info["input_shape"][0])
        self.normalize = Normalize(info["mean"], info["std"], (1, in_channels, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * channels * 16, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, int(info["num_classes"])),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


def build_model(config: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    return ConvNet(
        info,
        channels=int(config.get("channels", 32)),
        hidden=int(config.get("hidden", 128)),
        dropout=float(config.get("dropout", 0.2)),
    )


def input_example(data: Dataset) -> np.ndarray:
    return data.x_val[:5].numpy()


TASK = Task(
    load_data=load_data,
    build_model=build_model,
    loss_fn=cross_entropy,
    evaluate=evaluate_classifier,
    serving_model=with_probabilities,
    input_example=input_example,
)


def train(config: dict[str, Any], data: Dataset | None = None) -> None:
    """Ray Tune trainable: one report and checkpoint per epoch."""
    run_trial(TASK, config, data)
