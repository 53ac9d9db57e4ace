"""MNIST from the four original idx ``.gz`` files, through a TensorFlow-free TFDS builder."""

from __future__ import annotations

import dataclasses
import functools
import gzip

import numpy as np

from siamax.data import _paths
from siamax.data.download import resolve
from siamax.data.labelled import LabelledImages, model_format
from siamax.data.omniglot import _tfds, prepare, read_records

# Split -> (images, labels) archive names (keys of _paths.ARCHIVES; DATASETS["mnist"] lists the four).
_FILES = {s: (f"mnist_{s}_images", f"mnist_{s}_labels") for s in ("train", "test")}


@dataclasses.dataclass(frozen=True, eq=False)
class Mnist:
    """MNIST in memory, native form: uint8 (n, 28, 28), 255 = ink (light strokes on dark, ``ink="light"``)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    ink: str = "light"


def read_idx(path) -> np.ndarray:
    """An idx file (gzipped) as a numpy array, after checking its magic number and size."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of uint8")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {array.size} values for shape {shape}")
    return array.reshape(shape)


@functools.cache
def _builder_class():
    tfds = _tfds()

    class SiamaxMnist(tfds.core.GeneratorBasedBuilder):
        """MNIST (LeCun et al.), 28x28 uint8, prepared from the original idx files without TensorFlow."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "From the four idx .gz files; Tensor features."}

        def __init__(self, *, source_dir=None, download=True, **kwargs):
            self._source_dir = source_dir
            self._download = download
            super().__init__(**kwargs)

        def _info(self):
            f = tfds.features
            return tfds.core.DatasetInfo(
                builder=self,
                description="MNIST digits; image uint8, 255 = ink.",
                features=f.FeaturesDict(
                    {
                        "image": f.Tensor(shape=(28, 28), dtype=np.uint8, encoding=f.Encoding.ZLIB),
                        "label": f.ClassLabel(num_classes=10),
                        "index": f.Scalar(dtype=np.int32),  # position in the idx file
                    }
                ),
                homepage="http://yann.lecun.com/exdb/mnist/",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # siamax's resolver downloads into the data folder, so the next run is offline
            paths = resolve(["mnist"], self._source_dir, download=self._download)["mnist"]  # verified
            arrays = {}
            for split, (img, lab) in _FILES.items():
                images, labels = read_idx(paths[img]), read_idx(paths[lab])
                if images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
                    raise ValueError(f"MNIST {split}: images {images.shape} vs labels {labels.shape}")
                arrays[split] = (images, labels)
            return {s: self._generate_examples(*arrays[s]) for s in _FILES}

        def _generate_examples(self, images, labels):
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"image": image, "label": int(label), "index": i}

    return SiamaxMnist


def mnist_builder(data_dir=None, tfds_dir=None, *, download: bool = True):
    """The TFDS builder (not yet prepared)."""
    return _builder_class()(
        source_dir=_paths.data_dir(data_dir),
        download=download,
        data_dir=str(_paths.tfds_dir(tfds_dir)),
        file_format="array_record",
    )


def load_mnist(data_dir=None, tfds_dir=None, *, download: bool = True) -> Mnist:
    """MNIST in memory (original order restored), preparing the TFDS dataset first if needed.

    The four idx files are only read when preparing; missing ones are downloaded into ``data_dir``
    (``siamax.data.require``) unless ``download=False``.
    """
    return _load_mnist(str(_paths.data_dir(data_dir)), str(_paths.tfds_dir(tfds_dir)), download)


@functools.lru_cache(maxsize=4)
def _load_mnist(data_dir: str, tfds_dir: str, download: bool) -> Mnist:
    builder = prepare(lambda: mnist_builder(data_dir, tfds_dir, download=download))
    out = {}
    for split in _FILES:
        # TFDS shuffles records by key hash; put them back in the idx files' order.
        r = read_records(
            builder, split, {"image": ((28, 28), np.uint8), "label": ((), np.int64), "index": ((), np.int64)}
        )
        order = np.argsort(r["index"])
        if not np.array_equal(r["index"][order], np.arange(len(order))):
            raise ValueError(f"prepared MNIST {split} in {tfds_dir} is incomplete; delete its siamax_mnist folder")
        for k in ("image", "label"):
            r[k] = r[k][order]
            r[k].setflags(write=False)
        out[f"{split}_images"], out[f"{split}_labels"] = r["image"], r["label"]
    return Mnist(**out)


def mnist_table(data: Mnist, spec, split: str = "test") -> LabelledImages:
    """One MNIST split in model format for ``spec`` (28 -> S by ``model_format``'s bilinear resize;
    the paper upsamples to 35): classes are the digits "0".."9", one group."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {list(_FILES)}, got {split!r}")
    images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
    return LabelledImages(
        images=model_format(spec, images, data.ink),
        labels=labels,
        class_names=tuple(str(k) for k in range(10)),
        groups=np.zeros(10, np.int32),
        group_names=("digits",),
        paths=tuple(f"mnist/{split}/{i}" for i in range(len(labels))),
        name=f"mnist/{split}",
    )
