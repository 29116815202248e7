"""MNIST-style IDX files and CIFAR-10 python batches, read without torchvision, written here in
their real formats (a few hundred images), good and bad."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from tests.helpers import SPECS, write_spec
from trainables import cnn
from trainables.files import IDX_IMAGES, IDX_LABELS, DataError, read_idx
from tuning_platform.cli import main


def _idx(images_or_labels: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images_or_labels.shape)
    return header + images_or_labels.astype(np.uint8).tobytes()


def _write_mnist(folder, train=300, test=100, gz=True):
    """Train files gzipped as downloaded, test files unpacked, in torchvision's layout."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10
        arrays[split] = (images, labels)
        for kind, data, magic in (("images-idx3", images, IDX_IMAGES), ("labels-idx1", labels, IDX_LABELS)):
            content = _idx(data, magic)
            name = f"{split}-{kind}-ubyte"
            if gz and split == "train":
                (raw / f"{name}.gz").write_bytes(gzip.compress(content))
            else:
                (raw / name).write_bytes(content)
    return raw, arrays


def test_idx_files_load_with_the_official_test_split_held_out(tmp_path):
    _, arrays = _write_mnist(tmp_path)
    data = cnn.load_data({"dataset": "fashion_mnist", "root": str(tmp_path)})
    assert data.x_train.shape[1:] == (1, 28, 28) and len(data.x_train) + len(data.x_val) == 300
    assert len(data.x_test) == 100  # the t10k files, untouched
    assert torch.allclose(data.x_test[:, 0], torch.from_numpy(arrays["t10k"][0] / 255.0).float())
    assert torch.equal(data.y_test, torch.from_numpy(arrays["t10k"][1]))
    assert data.info["num_classes"] == 10 and data.for_trials().x_test is None


def _truncate_labels(raw):
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (100).to_bytes(4, "big") + b"\x01" * 40)


def _images_as_labels(raw):
    (raw / "t10k-labels-idx1-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes())


def _drop_test_images(raw):
    (raw / "t10k-images-idx3-ubyte").unlink()


def _break_gzip(raw):
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage")


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (
            _truncate_labels,
            "t10k-labels-idx1-ubyte: 48 bytes where the header's shape (100,) needs 108 (the file is truncated)",
        ),
        (_images_as_labels, "t10k-labels-idx1-ubyte: not an IDX label file (magic number 0x00000803 where 0x00000801"),
        (_drop_test_images, ": no t10k-images-idx3-ubyte (or t10k-images-idx3-ubyte.gz) here or in FashionMNIST/raw/"),
        (_break_gzip, "train-labels-idx1-ubyte.gz: not a readable gzip file"),
    ],
)
def test_bad_idx_files_are_named_with_what_is_wrong(tmp_path, damage, fragment):
    raw, _ = _write_mnist(tmp_path)
    damage(raw)
    with pytest.raises(DataError) as err:
        cnn.load_data({"dataset": "fashion_mnist", "root": str(tmp_path)})
    assert str(err.value).startswith(str(tmp_path)) and fragment in str(err.value), str(err.value)


def test_an_idx_file_with_labels_and_images_of_different_counts(tmp_path):
    raw, _ = _write_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(99), IDX_LABELS))
    with pytest.raises(DataError, match="100 images but t10k-labels-idx1-ubyte has 99 labels"):
        cnn.load_data({"dataset": "fashion_mnist", "root": str(tmp_path)})
    assert read_idx(raw / "t10k-labels-idx1-ubyte", IDX_LABELS).shape == (99,)


def _write_cifar(folder, per_batch=20):
    batches = folder / "cifar-10-batches-py"
    batches.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{n}" for n in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"labels": list(range(per_batch))}
        batch[b"labels"] = [i % 10 for i in batch[b"labels"]]
        (batches / name).write_bytes(pickle.dumps(batch))
    return batches


def test_cifar10_python_batches_load_with_the_test_batch_held_out(tmp_path):
    _write_cifar(tmp_path)
    data = cnn.load_data({"dataset": "cifar10", "root": str(tmp_path)})
    assert data.x_train.shape[1:] == (3, 32, 32) and len(data.x_train) + len(data.x_val) == 100
    assert len(data.x_test) == 20 and float(data.x_test.max()) <= 1.0


def test_bad_cifar10_batches_are_named_with_what_is_wrong(tmp_path):
    batches = _write_cifar(tmp_path)
    (batches / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=f"^{batches / 'data_batch_3'}: not a CIFAR-10 python batch"):
        cnn.load_data({"dataset": "cifar10", "root": str(tmp_path)})
    (batches / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        cnn.load_data({"dataset": "cifar10", "root": str(tmp_path)})


def test_a_bad_data_file_ends_the_command_with_one_line_before_anything_starts(tmp_path, monkeypatch, capsys):
    raw, _ = _write_mnist(tmp_path / "data")
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:5000])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = write_spec(tmp_path, (SPECS / "cnn.yaml").read_text())
    code = main([str(spec), "--set", "data.dataset=fashion_mnist", "--set", f"data.root={tmp_path / 'data'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {spec}: data: {raw / 't10k-images-idx3-ubyte'}: 5000 bytes where")
    assert lines[0].endswith("(the file is truncated)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "spec.yaml"], "no store, no Ray results"


def _write_image_folder(root, classes=("cat", "dog"), per_class=12, mode="RGB", size=(12, 10)):
    """PNG files in the ImageFolder layout; each class a colour of its own plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for n in range(per_class):
            channels = 3 if mode == "RGB" else 1
            base = np.full((size[1], size[0], channels), 60 + 120 * index, dtype=np.int64)
            pixels = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels if mode == "RGB" else pixels[:, :, 0], mode=mode).save(folder / f"{n:03d}.png")


def test_an_image_folder_loads_with_its_class_names_resized_and_split(tmp_path):
    _write_image_folder(tmp_path / "pets")
    data = cnn.load_data({"dataset": "image_folder", "root": str(tmp_path / "pets"), "image_size": 16})
    assert data.info["classes"] == ["cat", "dog"] and data.info["input_shape"] == [3, 16, 16]
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 24
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    # Greyscale folders stay one channel; root/train and root/test keep the given test split.
    for split, count in (("train", 10), ("test", 5)):
        _write_image_folder(tmp_path / "grey" / split, per_class=count, mode="L")
    grey = cnn.load_data({"dataset": "image_folder", "root": str(tmp_path / "grey"), "image_size": 8})
    assert grey.info["input_shape"] == [1, 8, 8] and len(grey.x_test) == 10
    assert len(grey.x_train) + len(grey.x_val) == 20
    model = cnn.build_model({"channels": 4}, grey.info)
    assert model(grey.x_val).shape == (len(grey.x_val), 2)


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda root: (root / "dog" / "003.png").write_bytes(b"not a png"), r"dog/003.png: not a readable image"),
        (lambda root: [p.unlink() for p in sorted((root / "dog").iterdir())[3:]], r"class 'dog' has 3 images; each"),
        (
            lambda root: (root / "dog").rename(root.parent / "elsewhere"),
            r"1 class folders; an image classifier needs two",
        ),
    ],
)
def test_a_bad_image_folder_is_named(tmp_path, spoil, message):
    _write_image_folder(tmp_path / "pets")
    spoil(tmp_path / "pets")
    with pytest.raises(DataError, match=message):
        cnn.load_data({"dataset": "image_folder", "root": str(tmp_path / "pets")})
