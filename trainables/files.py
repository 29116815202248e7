"""Public image sets in their own file formats, read with numpy alone (no torchvision).

- MNIST and Fashion-MNIST: the IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each as downloaded, `.gz`, or unpacked),
  in the folder given or in torchvision's layout below it (`MNIST/raw`, `FashionMNIST/raw`).
- CIFAR-10: the python version's pickled batches (`data_batch_1` .. `data_batch_5`,
  `test_batch`) in `cifar-10-batches-py/` below the folder given, or in the folder itself.
- Any image folder in torchvision's ImageFolder layout (`root/CLASS/*.png`, optionally
  `root/train/CLASS` and `root/test/CLASS`), read with Pillow and resized.

A file that is missing, truncated or not what its name says is a `DataError` naming the file
and what is wrong with it.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file a user gave that cannot be used: the message names the file and the fault."""


# IDX magic numbers: two zero bytes, the element type (0x08: unsigned byte), the dimension count.
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = [f"data_batch_{n}" for n in range(1, 6)]


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file (gzipped or not) as a uint8 array of the shape its header gives."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a readable gzip file ({err})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "image" if magic == IDX_IMAGES else "label"
        raise DataError(f"{path}: not an IDX {kind} file (magic number {found:#010x} where {magic:#010x} was expected)")
    dims = magic & 0xFF
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes where the header's shape {shape} needs {expected}"
            + (" (the file is truncated)" if len(raw) < expected else "")
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_path(root: Path, dataset: str, name: str) -> Path:
    folders = [root, root / TORCHVISION_FOLDERS[dataset] / "raw"]
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{root}: no {name} (or {name}.gz) here or in {folders[1].relative_to(root)}/")


def read_mnist(root: str | Path, dataset: str = "mnist") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images (N, 1, 28, 28) in 0..1, train labels, test images, test labels."""
    root = Path(root).expanduser()
    arrays = []
    for split in ("train", "test"):
        images_path = _idx_path(root, dataset, IDX_FILES[f"{split}_images"])
        labels_path = _idx_path(root, dataset, IDX_FILES[f"{split}_labels"])
        images, labels = read_idx(images_path, IDX_IMAGES), read_idx(labels_path, IDX_LABELS)
        if len(images) != len(labels):
            raise DataError(f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..9")
        arrays += [images[:, None].astype(np.float32) / 255.0, labels.astype(np.int64)]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing (the CIFAR-10 python version has data_batch_1..5 and test_batch)")
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")  # noqa: S301 - the user's own dataset file
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 python batch (no data and labels in it)")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{path}: data of shape {data.shape} for {len(labels)} labels; expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


def read_cifar10(root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images (N, 3, 32, 32) in 0..1, train labels, test images, test labels."""
    root = Path(root).expanduser()
    folder = root / CIFAR_FOLDER if (root / CIFAR_FOLDER).is_dir() else root
    train = [_cifar_batch(folder / name) for name in CIFAR_TRAIN_BATCHES]
    test_images, test_labels = _cifar_batch(folder / "test_batch")
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), test_images, test_labels


# --- An image folder (torchvision's ImageFolder convention) ------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_images(root: Path, classes: list[str], size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        for file in files:
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert(mode).resize((size, size), Image.Resampling.BILINEAR))
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise DataError(f"{file}: not a readable image ({err})") from None
            images.append(pixels.reshape(size, size, -1).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return np.stack(images).astype(np.float32) / 255.0, np.asarray(labels, dtype=np.int64)


def image_mode(root: Path) -> str:
    """`L` when every image of the first class folders is greyscale, else `RGB`."""
    from PIL import Image

    for folder in _class_folders(root)[:3]:
        for file in sorted(folder.rglob("*"))[:20]:
            if file.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(file) as image:
                        if image.mode not in ("L", "1", "I;16"):
                            return "RGB"
                except OSError:
                    continue  # read again, and named, by _read_images
    return "L"


def read_image_folder(
    root: str | Path, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """Images (N, C, size, size) in 0..1 and labels from `root/CLASS/*.png` (any depth below
    the class folder), each resized to size x size; with `root/train/CLASS` and
    `root/test/CLASS`, the test folder is the test split (else None). The classes are the
    sorted folder names."""
    root = Path(root).expanduser()
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    train_root = root / "train" if has_splits else root
    classes = [p.name for p in _class_folders(train_root)]
    if len(classes) < 2:
        raise DataError(f"{train_root}: {len(classes)} class folders; an image classifier needs two (root/CLASS/*.png)")
    mode = image_mode(train_root)
    x_train, y_train = _read_images(train_root, classes, size, mode)
    if not has_splits:
        return x_train, y_train, None, None, classes
    unknown = [p.name for p in _class_folders(root / "test") if p.name not in classes]
    if unknown:
        raise DataError(f"{root / 'test'}: class folders {', '.join(unknown)} are not in {train_root}")
    x_test, y_test = _read_images(root / "test", classes, size, mode)
    return x_train, y_train, x_test, y_test, classes
