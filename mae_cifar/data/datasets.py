"""Datasets as (N, C, H, W) uint8 tensors on the training device: CIFAR-10/100, Fashion-MNIST,
an image folder and generated images; held-out validation carving and image records. Grey
datasets (Fashion-MNIST, grey folders) keep one channel, so the model's in_chans follows the data.
"""
import gzip
import hashlib
import json
import os
import socket
import stat
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from mae_cifar.cli import UsageError
from mae_cifar.data import generated

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "folder", "fake", "shapes")
SPLIT_SEED = 0  # fixes the held-out validation images and the fake dataset, whatever --seed
FOLDER_DEFAULT_SIZE = 32  # side of folder and fake images unless --image_size says otherwise
NATIVE = {"cifar10": (3, 32), "cifar100": (3, 32), "fashion_mnist": (1, 28),
          "folder": (3, FOLDER_DEFAULT_SIZE), "fake": (3, FOLDER_DEFAULT_SIZE),
          "shapes": (3, FOLDER_DEFAULT_SIZE)}  # (chans, side)
FAKE_SIZES = {"train": 4096, "test": 1024}
FAKE_CLASSES = 10
FAKE_NOISE = 0.1  # std of pixel noise in fake images, relative to the [0, 1] range
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
UNLABELLED = -1  # the label of every image of an unlabelled folder (its classes: [])
DOWNLOAD_TIMEOUT_S = 20  # a download that receives nothing this long fails (offline machines)


def image_shape(name, image_size=None):
    """(in_chans, image_size) the model will see, known before any file is read."""
    chans, side = NATIVE[name]
    return chans, image_size or side


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    # (N,) int64 on the CPU: each image's position in the dataset's own train or test split,
    # so a run can record exactly which images it used (image_record); None if unknown
    index: torch.Tensor | None = None

    def __len__(self):
        return len(self.labels)

    def to(self, device):
        return Split(self.images.to(device), self.labels.to(device), self.index)

    def head(self, n):
        return self if n is None else self.take(slice(n))

    def take(self, idx):
        """The images at idx (a slice or a CPU index tensor), in that order."""
        index = None if self.index is None else self.index[idx]
        return Split(self.images[idx], self.labels[idx], index)


@dataclass
class Dataset:
    name: str
    source: str  # where the images were read from
    train: Split
    test: Split
    val: Split | None  # held out from train by --val_split, else None
    classes: list
    mean: torch.Tensor  # (C,) per-channel mean of the train split in [0, 1]
    std: torch.Tensor  # (C,)
    sha256: str = ""  # data_sha256() of the dataset as read, before any split or resize
    train_total: int = 0  # images in the dataset's training split, before any carve
    # how many val images the stage's pretrained MAE was trained on (None: unknown)
    val_in_pretraining: int | None = None

    @property
    def in_chans(self):
        return self.train.images.shape[1]

    @property
    def image_size(self):
        return self.train.images.shape[-1]

    @property
    def num_classes(self):
        return len(self.classes)

    def describe(self):
        val = f", {len(self.val)} val" if self.val is not None else ""
        return (f"{self.name}: {len(self.train)} train{val}, {len(self.test)} test images "
                f"{self.in_chans}x{self.image_size}x{self.image_size} from {self.source}")


# --------------------------------------------------------------------------- loading
def load_dataset(name, data_dir="./data", image_size=None, max_train=None, max_eval=None,
                 val_split=0, device="cpu", labels="required"):
    """Load both splits as uint8 tensors on `device`; raise UsageError if unavailable.

    labels, for a folder: 'required' refuses unlabelled images, 'optional'
    reads a flat folder of images as unlabelled, 'ignored' reads any folder as unlabelled
    (every label UNLABELLED, classes [])."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    loader = {"cifar10": _cifar, "cifar100": _cifar, "fashion_mnist": _fashion_mnist,
              "folder": partial(_folder, labels=labels), "fake": _fake, "shapes": _shapes}[name]
    train, test, classes, source = loader(name, data_dir, image_size)
    for split, what in ((train, "training"), (test, "test")):
        check_split(split, len(classes), f"{what} split of {source}")
    sha256 = data_sha256(train, test, classes)
    if image_size is not None:
        train, test = _resize(train, image_size), _resize(test, image_size)
    train_total = len(train)
    train = Split(train.images, train.labels, torch.arange(len(train)))
    test = Split(test.images, test.labels, torch.arange(len(test)))
    mean, std = channel_stats(train.images)  # of the whole training split, as before
    val = None
    if val_split:
        train_idx, val_idx = carve(len(train), val_split)
        val = train.take(val_idx).head(max_eval).to(device)
        train = train.take(train_idx)
    return Dataset(name, source, train.head(max_train).to(device),
                   test.head(max_eval).to(device), val, classes, mean, std, sha256, train_total)


def data_sha256(train, test, classes):
    """sha256 of what the dataset is: both splits' images and labels, in order, and the class
    names; a run records it and resumes only on the same data."""
    digest = hashlib.sha256()
    for split in (train, test):
        for t in (split.images, split.labels):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.contiguous().cpu().numpy().tobytes())
    digest.update(json.dumps(list(classes)).encode())
    return digest.hexdigest()


def carve(n, val_split):
    """(train, val) positions of n training images: one SPLIT_SEED permutation, its first
    val_split positions held out for validation and the rest, in that order, for training
    (--max_train_images takes the first of those)."""
    if not 0 < val_split < n:
        raise UsageError(f"--val_split {val_split} must be between 1 and {n - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[val_split:], perm[:val_split]


def training_positions(n, val_split, max_train):
    """The positions in a training split of n images that a run with --val_split and
    --max_train_images trained on (load_dataset's carving)."""
    positions = carve(n, val_split)[0] if val_split else torch.arange(n)
    return positions[:max_train]


def image_record(split, source, n=None):
    """Which images a run used, for summary.json: the first n of split (all: None).

    {'source': 'train' | 'test' (the dataset split the positions refer to), 'count',
    'sha256': of the sorted positions as little-endian int64 bytes}, so a reader can check
    a set with hashlib.sha256(np.sort(idx).astype('<i8').tobytes()).hexdigest()."""
    idx = split.index[:n].numpy()
    digest = hashlib.sha256(np.sort(idx).astype("<i8").tobytes()).hexdigest()
    return {"source": source, "count": len(idx), "sha256": digest}


def check_split(split, num_classes, what):
    """UsageError unless split holds (N, C, H, W) images with N labels in [0, num_classes)."""
    n_img, n_lab = split.images.shape[0], split.labels.shape[0]
    if split.images.ndim != 4 or split.labels.ndim != 1:
        raise UsageError(f"the {what} has images of shape {tuple(split.images.shape)} and "
                         f"labels of shape {tuple(split.labels.shape)}; are the image and "
                         "label files swapped?")
    if n_img != n_lab:
        raise UsageError(f"the {what} has {n_img} images but {n_lab} labels; a file is "
                         "truncated or from another dataset")
    if n_lab and num_classes and \
            not 0 <= int(split.labels.min()) <= int(split.labels.max()) < num_classes:
        raise UsageError(f"the {what} has labels outside 0..{num_classes - 1} (found "
                         f"{int(split.labels.min())}..{int(split.labels.max())})")


def channel_stats(images):
    """Per-channel mean and std in [0, 1] of a uint8 (N, C, H, W) tensor."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255
    return x.mean(dim=1).float(), x.std(dim=1).float()


def _resize(split, size):
    if split.images.shape[-1] == size and split.images.shape[-2] == size:
        return split
    x = F.interpolate(split.images.float(), size=(size, size), mode="bilinear",
                      antialias=True, align_corners=False)
    return Split(x.round().clamp(0, 255).to(torch.uint8), split.labels)


def _missing(name, data_dir, what):
    return UsageError(f"{name} not found in {data_dir} and could not be downloaded (no network?);"
                      f" put {what} there, or pass --data_dir")


@contextmanager
def _download_timeout():
    """torchvision downloads without a timeout; a blocked network would hang them for minutes."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _cifar(name, data_dir, image_size):
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    archive = cls.filename
    splits = []
    for train in (True, False):
        try:
            ds = cls(data_dir, train=train, download=False)
        except RuntimeError:
            try:
                with _download_timeout():
                    ds = cls(data_dir, train=train, download=True)
            except Exception:
                raise _missing(name, data_dir,
                               f"{archive} or its extracted {cls.base_folder}/") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        splits.append(Split(images, torch.tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1], list(ds.classes), os.path.join(data_dir, cls.base_folder)


FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def _fashion_mnist(name, data_dir, image_size):
    """Raw idx files (optionally .gz) in data_dir (Debian's layout) or torchvision's layout."""
    folder = _find_idx_folder(data_dir)
    if folder is None:
        from torchvision import datasets
        try:
            with _download_timeout():
                datasets.FashionMNIST(data_dir, train=True, download=True)
        except Exception:
            raise _missing(name, data_dir, "train-images-idx3-ubyte.gz and the other three "
                           "idx files (apt-get install dataset-fashion-mnist puts them in "
                           "/usr/share/datasets/fashion-mnist)") from None
        folder = _find_idx_folder(data_dir)
    splits = [Split(_read_idx(folder, img).unsqueeze(1), _read_idx(folder, lab).long())
              for img, lab in (FASHION_FILES["train"], FASHION_FILES["test"])]
    return splits[0], splits[1], FASHION_CLASSES, folder


def _find_idx_folder(data_dir):
    for folder in (data_dir, os.path.join(data_dir, "FashionMNIST", "raw")):
        if all(_idx_path(folder, f) for pair in FASHION_FILES.values() for f in pair):
            return folder
    return None


def _idx_path(folder, stem):
    for path in (os.path.join(folder, stem), os.path.join(folder, stem + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def _read_idx(folder, stem):
    """Read an idx file (the MNIST format): big-endian header, then uint8 data."""
    path = _idx_path(folder, stem)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not a uint8 idx file")
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError, zlib.error) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    return torch.from_numpy(arr.copy())


def _folder(name, data_dir, image_size, labels):
    """An ImageFolder tree: data_dir/train/<class>/*.png and data_dir/test (or val)/...; or,
    unlabelled (see load_dataset's labels), a flat folder of images or a tree's images."""
    size = image_size or FOLDER_DEFAULT_SIZE
    test_dir = _test_dir(data_dir)
    flat = not os.path.isdir(os.path.join(data_dir, "train")) and _image_files(data_dir)
    if flat and labels == "required":
        raise UsageError(f"{data_dir} is a folder of unlabelled images; classification needs "
                         f"labels: {data_dir}/train/<class>/ and {data_dir}/test/<class>/ "
                         "(mae_pretrain.py pretrains on unlabelled images)")
    if flat or labels == "ignored":
        return _unlabelled_folder(data_dir, test_dir, size)
    if not os.path.isdir(os.path.join(data_dir, "train")) or test_dir is None:
        raise UsageError(f"folder dataset needs {data_dir}/train/<class>/ and "
                         f"{data_dir}/test/<class>/ (or val/) with images")
    classes = _class_folders(os.path.join(data_dir, "train"))
    if len(classes) < 2:
        raise UsageError(f"{data_dir}/train has {len(classes)} class folder(s); "
                         "a classification dataset needs at least 2")
    extra = [c for c in _class_folders(test_dir) if c not in classes
             and _image_files(os.path.join(test_dir, c))]
    if extra:
        raise UsageError(f"{test_dir} has class folder(s) {', '.join(extra)} that "
                         f"{data_dir}/train lacks: their test images would be dropped from "
                         "the accuracy; add them to train, or remove them from the test split")
    train = _read_image_tree(os.path.join(data_dir, "train"), classes, size)
    test = _read_image_tree(test_dir, classes, size)
    return train, test, classes, data_dir


def _test_dir(data_dir):
    return next((os.path.join(data_dir, d) for d in ("test", "val")
                 if os.path.isdir(os.path.join(data_dir, d))), None)


def _class_folders(folder):
    """The class folders of a split folder, sorted: its sub-folders but hidden ones (not
    .ipynb_checkpoints)."""
    try:
        return sorted(d.name for d in os.scandir(folder)
                      if d.is_dir() and not d.name.startswith("."))
    except OSError as e:  # a symlink loop among the class folders, say
        raise UsageError(f"cannot list {e.filename}: {e.strerror}") from None


def _read_image_tree(root, classes, size):
    pass


def _unlabelled_folder(data_dir, test_dir, size):
    """Every image of data_dir/train (or of data_dir itself) and of its subfolders, without
    labels; the test split likewise from test_dir, or empty without one."""
    train_dir = os.path.join(data_dir, "train")
    train = _read_images(_all_image_files(train_dir if os.path.isdir(train_dir) else data_dir),
                         UNLABELLED, size, data_dir)
    test = _read_images(_all_image_files(test_dir), UNLABELLED, size, test_dir) if test_dir \
        else _read_images([], UNLABELLED, size)
    return train, test, [], f"{data_dir} (unlabelled)"


def _all_image_files(root):
    """The images directly in root, then those of each (non-hidden) subfolder, sorted."""
    try:
        subs = sorted(d.path for d in os.scandir(root)
                      if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        raise UsageError(f"cannot list {e.filename or root}: {e.strerror}") from None
    return [p for folder in (root, *subs) for p in _image_files(folder)]


def _read_image_tree(root, classes, size):
    splits = [_read_images(_image_files(os.path.join(root, cls)), label, size)
              for label, cls in enumerate(classes)]
    if not any(len(s) for s in splits):
        raise UsageError(f"no images found under {root} (extensions: "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    kept = [s for s in splits if len(s)]
    return Split(torch.cat([s.images for s in kept]), torch.cat([s.labels for s in kept]))


def _read_images(paths, label, size, root=None):
    """The images at paths as RGB size x size, each labelled `label` (none: an empty split);
    UsageError for an unreadable one, or (root given) for no images at all."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise UsageError(f"cannot read image {path} ({e}); remove or replace it") from None
    if not images:
        if root is not None:
            raise UsageError(f"no images found under {root} (extensions: "
                             f"{', '.join(IMAGE_EXTENSIONS)})")
        return Split(torch.empty(0, 3, size, size, dtype=torch.uint8),
                     torch.empty(0, dtype=torch.long))
    return Split(torch.stack(images), torch.full((len(images),), label, dtype=torch.long))


def _image_files(folder):
    """Sorted image paths in a class folder (none if it is missing); UsageError for a folder
    that cannot be listed or an image name that is not a regular file (a FIFO would hang)."""
    if not os.path.isdir(folder):
        return []
    try:
        names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        paths = [os.path.join(folder, f) for f in names]
        irregular = next((p for p in paths if not stat.S_ISREG(os.stat(p).st_mode)), None)
    except OSError as e:
        raise UsageError(f"cannot list {e.filename or folder}: {e.strerror}") from None
    if irregular:
        raise UsageError(f"{irregular} is not a regular file; remove it")
    return paths


def _fake(name, data_dir, image_size):
    """Deterministic images whose content depends on the label, so models can learn.

    Class c is a colour grating at angle pi*c/10 with a class-specific frequency and tint;
    each image has a random phase and pixel noise. The same images every time.
    """
    size = image_size or FOLDER_DEFAULT_SIZE
    g = torch.Generator().manual_seed(SPLIT_SEED)
    splits = []
    for split in ("train", "test"):
        n = FAKE_SIZES[split]
        labels = torch.randint(0, FAKE_CLASSES, (n,), generator=g)
        angle = labels.float() * torch.pi / FAKE_CLASSES  # (N,)
        freq = 2 * torch.pi * (1 + labels.float() % 3) / size  # 1-3 periods per image
        phase = torch.rand(n, generator=g) * 2 * torch.pi
        coords = torch.arange(size).float()
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (H, W)
        proj = (torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy)
        wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])  # (N, H, W)
        tint = torch.stack([torch.cos(angle), torch.sin(angle), torch.cos(2 * angle)], 1)
        x = 0.5 + 0.25 * wave[:, None] * (1 + tint[:, :, None, None]) / 2  # (N, 3, H, W)
        x = x + FAKE_NOISE * torch.randn(x.shape, generator=g)
        images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        splits.append(Split(images, labels))
    classes = [f"class_{c}" for c in range(FAKE_CLASSES)]
    return splits[0], splits[1], classes, "generated images (--dataset fake)"


def _shapes(name, data_dir, image_size):
    """Generated shapes (generated.py): structure a masked autoencoder can learn to fill in.
    The same images every time, as many as the fake set's."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    size = image_size or FOLDER_DEFAULT_SIZE
    train, test = (Split(*generated.shapes(FAKE_SIZES[s], size, g)) for s in ("train", "test"))
    return train, test, list(generated.SHAPES), "generated shapes (--dataset shapes)"
