"""The one dataset model: labelled images in model format, on the device.

Every dataset becomes a :class:`LabelledImages` (Omniglot, MNIST, a folder of one's own images),
and every sampler, task generator, verification pair set, evaluation and report reads one. The
images are converted once, by :func:`model_format` (``siamax.preprocess``, then rounded to
uint8), so training and evaluation see exactly the same pixels.

Model format: uint8 ``(N, S, S)``, ink = 255, paper = 0, ``S`` the model's input size; for an RGB
model (``spec.channels == 3``) uint8 ``(N, S, S, 3)``, each channel so. Classes
are ``0 .. C-1`` (``labels``, one per image); each class belongs to one group (``groups``: an
Omniglot alphabet, a folder of classes; one group ``0`` when the data has none), the unit that
within-group tasks and hard negatives use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from siamax.errors import InputError

INK = 255  # the value of ink in model format (paper is 0)


def to_model(spec, images, ink: str) -> jax.Array:
    """Raw images -> uint8 (B, S, S) model format ((B, S, S, 3) for an RGB model); pure and jittable (what
    :func:`model_format` runs).

    The one route from raw pixels to the tower: ``siamax.preprocess`` (invert dark ink, pad to a
    square, antialiased resize to S x S), then rounded to uint8. Evaluation calls it on every raw
    image it embeds, so evaluation sees exactly the pixels training does.
    """
    from siamax.api import preprocess  # late import: api -> model -> conv is heavier than data

    return jnp.round(preprocess(spec, images, ink=ink) * INK).astype(jnp.uint8)


def model_format(spec, images, ink: str, *, chunk: int = 1024) -> jax.Array:
    """Native images ``(N, H, W)`` (or ``(N, H, W, C)``, any dtype ``siamax.preprocess`` takes) ->
    uint8 ``(N, S, S)`` model format (``(N, S, S, 3)`` for an RGB model) for ``spec`` (a ModelSpec, a model
    name or Params), on the device.

    :func:`to_model` in jitted chunks of a fixed size (the last one padded), so one compilation
    serves any number of images.
    """
    images = np.asarray(images)
    if images.ndim < 3 or images.shape[0] == 0:
        raise InputError(f"model_format expects a non-empty batch (N, H, W[, C]), got shape {images.shape}")
    from siamax.api import _spec_of  # late import, as in to_model

    spec = _spec_of(spec)
    n = images.shape[0]
    chunk = min(chunk, n)
    padded = np.concatenate([images, images[: (-n) % chunk]]) if n % chunk else images
    parts = [_to_model_jit(spec, padded[i : i + chunk], ink) for i in range(0, len(padded), chunk)]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)[:n]  # one chunk (n <= chunk) is not padded


# One jitted function for the process (not one per call), so a repeated (spec, shape, ink) is compiled
# once: ``siamax serve`` converts every upload through here, and a fresh jit per call cost ~90 ms.
_to_model_jit = jax.jit(to_model, static_argnums=(0, 2))


def _compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept ids in increasing order, values relabelled 0..K-1 in that order): an order-keeping relabelling."""
    kept, inverse = np.unique(values, return_inverse=True)
    return kept, inverse.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledImages:
    """Images in model format on the device, a class per image, a group per class, names for reports.

    Attributes:
      images: uint8 (N, S, S), or (N, S, S, 3) for RGB, ink = 255, on the device.
      labels: int32 (N,), the class of each image, in [0, C).
      class_names: (C,) a name per class (e.g. "Greek/character03", "7", a folder name).
      groups: int32 (C,), the group of each class, in [0, G).
      group_names: (G,) a name per group.
      paths: (N,) where each image came from (a file, or an archive member), or () if unknown.
      name: what the table holds, for reports ("omniglot", "mnist/test", a folder).
    """

    images: jax.Array
    labels: np.ndarray
    class_names: tuple[str, ...]
    groups: np.ndarray
    group_names: tuple[str, ...] = ("all",)
    paths: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self):
        labels = np.asarray(self.labels, np.int32)
        groups = np.asarray(self.groups, np.int32)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "group_names", tuple(self.group_names))
        object.__setattr__(self, "paths", tuple(self.paths))
        shape = tuple(self.images.shape)
        rgb = len(shape) == 4 and shape[-1] == 3
        if not (len(shape) == 3 or rgb) or self.images.dtype != jnp.uint8 or shape[1] != shape[2]:
            got = f"{self.images.dtype}{shape}"
            raise InputError(f"images must be uint8 (N, S, S) or (N, S, S, 3) in model format, got {got}")
        n, c = self.images.shape[0], len(self.class_names)
        if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= c)):
            raise InputError(f"labels must be (N,) = ({n},) classes in [0, {c}), got {labels.shape}")
        if groups.shape != (c,) or (c and (groups.min() < 0 or groups.max() >= len(self.group_names))):
            raise InputError(f"groups must be (C,) = ({c},) in [0, {len(self.group_names)}), got {groups.shape}")
        if self.paths and len(self.paths) != n:
            raise InputError(f"paths must name all {n} images, got {len(self.paths)}")
        empty = np.flatnonzero(np.bincount(labels, minlength=c) == 0)
        if len(empty):
            raise InputError(f"classes without images: {[self.class_names[i] for i in empty[:5]]}")

    @property
    def size(self) -> int:
        """S, the side of the (square) images."""
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        """1 (gray, (N, S, S)) or 3 (RGB, (N, S, S, 3))."""
        return 3 if self.images.ndim == 4 else 1

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def class_counts(self) -> np.ndarray:
        """(C,) images per class."""
        return np.bincount(self.labels, minlength=self.n_classes)

    def take(self, index: Sequence[int] | np.ndarray, name: str | None = None) -> LabelledImages:
        """The images at ``index`` (in that order) as a table of their own; classes and groups that
        remain are renumbered 0.. in their original order (so class i < j stays i' < j')."""
        index = np.asarray(index, np.int64)
        classes, labels = _compact(self.labels[index])
        group_ids, groups = _compact(self.groups[classes])
        return LabelledImages(
            images=self.images[jnp.asarray(index)],
            labels=labels,
            class_names=tuple(self.class_names[i] for i in classes),
            groups=groups,
            group_names=tuple(self.group_names[g] for g in group_ids),
            paths=tuple(self.paths[i] for i in index) if self.paths else (),
            name=self.name if name is None else name,
        )

    def of_classes(self, classes: Sequence[int], name: str | None = None) -> LabelledImages:
        """All images of the given classes, in table order."""
        return self.take(np.flatnonzero(np.isin(self.labels, np.asarray(classes))), name)

    def describe(self) -> str:
        counts = self.class_counts()
        return (
            f"{self.name or 'images'}: {self.n_images} images of {self.n_classes} classes in {self.n_groups} groups, "
            f"{counts.min()}-{counts.max()} images per class, {self.size}x{self.size}"
            + (" RGB" if self.channels == 3 else "")
        )
