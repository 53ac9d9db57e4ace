"""What the evaluators run a model through: an *embedder* turns images into vectors and scores pairs of them.

An embedder has

* ``name``: how reports call it ("siamax", "pixels");
* ``embed(images, ink) -> (N, D)``: images (N, H, W) as a task or table holds them (native form, or
  model format: uint8, ink = 255, ``ink="light"``) to vectors;
* ``pair_scores(emb, i1, i2) -> np.ndarray``: a score per pair of rows ``(emb[i1], emb[i2])``,
  higher = more alike;
* ``energy``, ``head``, ``dtype``: how ``siamax.metrics.retrieval_report`` ranks its vectors (an
  energy name of ``siamax.energies``, its head parameters or ``None`` for ``-distance``, the compute
  dtype);
* optionally ``score_matrix(queries, support) -> (Q, S)``: one task's query x support scores, when the
  embedder scores a whole task its own way (``PixelEmbedder``: its 1-NN formulas); without it the
  one-shot evaluator embeds every distinct image of all tasks once and scores all pairs in one go.

``ModelEmbedder(params)`` is a siamax network: the one route to model format
(``siamax.data.labelled.to_model``, the very pixels training sees) then the tower, in jitted chunks of
a fixed size (the last padded: one compilation), and the head's same-class probabilities.
``PixelEmbedder(metric)`` is the raw-pixel baseline: ink = 1 float vectors at the images' own size,
compared by Euclidean distance or cosine similarity; ``EigenfaceEmbedder`` the same vectors projected
onto principal components fitted on training images (the face baseline). ``as_embedder`` accepts any
of them, or Params.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from siamax import api, augment, energies
from siamax.data.labelled import to_model

PIXEL_METRICS = ("euclidean", "cosine")


@functools.partial(jax.jit, static_argnames="ink")
def _embed_raw(params, raw, ink, transform=None):
    # The one route (siamax.data.labelled.to_model): the very pixels training sees, uint8 included.
    x = to_model(params, raw, ink)
    if transform is not None:  # test-time augmentation: one fixed distortion of every image
        x = augment.apply_affine(x.astype(jnp.float32) / 255.0, jnp.broadcast_to(transform, (x.shape[0], 7)))
        x = jnp.clip(x, 0.0, 1.0)
    return api.embed(params, x)


@jax.jit
def _score_rows(params, emb, i1, i2):
    return api.score_embeddings(params, emb[i1], emb[i2])


class ModelEmbedder:
    """A siamax network as an embedder (module docstring). ``batch_size``: images per tower call;
    ``pair_chunk``: pairs per head call (fixed shapes: one compilation each); ``transform``: None, or
    one affine transform (7,) (``siamax.augment``) applied to every image in model format before the
    tower (a member of :func:`with_tta`)."""

    name = "siamax"

    def __init__(self, params: api.Params, *, batch_size: int = 256, pair_chunk: int = 4096, transform=None):
        if not isinstance(params, api.Params):
            raise TypeError(f"ModelEmbedder needs siamax Params, got {type(params).__name__}")
        self.params = params
        self.transform = None if transform is None else jnp.asarray(transform, jnp.float32).reshape(7)
        self.batch_size = int(batch_size)
        self.pair_chunk = int(pair_chunk)

    @property
    def energy(self) -> str:
        return self.params.spec.energy

    @property
    def head(self):
        return self.params.weights["head"]

    @property
    def dtype(self) -> str:
        return self.params.spec.dtype

    def embed(self, images, ink: str) -> jax.Array:
        """Embeddings (N, D) of images (N, H, W), native or model format (uint8, ``ink="light"``),
        brought to model format by ``to_model`` and computed in jitted chunks of exactly ``batch_size``
        (the last one padded; the padding rows are dropped)."""
        images = np.asarray(images)
        if images.dtype == bool:  # JAX copies raw bytes: make True exactly 1 (see canonical_bool)
            images = images.view(np.uint8) != 0
        n, b = images.shape[0], self.batch_size
        n_pad = -(-n // b) * b
        padded = np.concatenate([images, np.repeat(images[:1], n_pad - n, axis=0)]) if n_pad > n else images
        parts = [_embed_raw(self.params, padded[lo : lo + b], ink, self.transform) for lo in range(0, n_pad, b)]
        emb = jnp.concatenate(parts)
        return emb[:n] if n_pad > n else emb

    def pair_scores(self, emb, i1, i2) -> np.ndarray:
        """Same-class probabilities (``siamax.score_embeddings``) of rows (i1, i2) of ``emb``, in jitted
        chunks of exactly ``pair_chunk`` pairs (the last padded)."""
        chunk = self.pair_chunk
        n = len(i1)
        n_pad = max(chunk, -(-n // chunk) * chunk)
        i1 = np.pad(np.asarray(i1, np.int32), (0, n_pad - n))
        i2 = np.pad(np.asarray(i2, np.int32), (0, n_pad - n))
        out = [_score_rows(self.params, emb, i1[lo : lo + chunk], i2[lo : lo + chunk]) for lo in range(0, n_pad, chunk)]
        return np.asarray(jnp.concatenate(out))[:n]


class EnsembleEmbedder:
    """Several siamax networks as one embedder: a same-class probability is the mean of the members'
    probabilities, for pairs and for retrieval alike (``siamax.energies.MeanProbability``, the ranking
    of ``siamax.Index`` for a ``siamax.Ensemble``).

    ``embed`` gives the members' embeddings side by side (N, sum of D), each member bringing the images
    to its own model format (so members of different input sizes combine here, unlike in a
    ``siamax.Ensemble``); ``pair_scores`` splits them again and averages each member's head.
    ``members``: Params or ``ModelEmbedder``s (``kwargs`` go to the ``ModelEmbedder`` of each Params)."""

    name = "ensemble"
    dtype = "float32"  # each member computes in its own (MeanProbability holds them)

    def __init__(self, members, **kwargs):
        members = [m if isinstance(m, ModelEmbedder) else ModelEmbedder(m, **kwargs) for m in members]
        if len(members) < 2:
            raise ValueError(f"an ensemble needs 2 or more members, got {len(members)}")
        self.members = members
        self.bounds = np.cumsum([0] + [m.params.spec.embedding_dim for m in members])
        self.energy = energies.MeanProbability.of(m.params.spec for m in members)
        self.head = energies.MeanProbability.joined_head(m.head for m in members)

    def _parts(self, emb) -> list:
        return [emb[:, lo:hi] for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]

    def embed(self, images, ink: str) -> jax.Array:
        return jnp.concatenate([m.embed(images, ink) for m in self.members], axis=1)

    def pair_scores(self, emb, i1, i2) -> np.ndarray:
        parts = self._parts(jnp.asarray(emb))
        return np.mean([m.pair_scores(e, i1, i2) for m, e in zip(self.members, parts)], axis=0)


def with_tta(model, n: int, *, seed: int = 0):
    """``model`` (Params, a ``siamax.Ensemble`` or an :class:`EnsembleEmbedder` of ModelEmbedders) scored
    with test-time augmentation: every image under ``n`` fixed distortions (``augment.tta_transforms(n,
    seed)``: the identity and ``n - 1`` of the paper's), a pair's probability the mean over the ``n``
    distorted pairs (and over the members), retrieval ranked by that mean. ``n`` times the tower
    passes. ``n = 1``: the model as it is. For images: a log-mel image is not distorted so."""
    members = as_embedder(model)
    members = members.members if isinstance(members, EnsembleEmbedder) else [members]
    if not all(isinstance(m, ModelEmbedder) and m.transform is None for m in members):
        raise TypeError("with_tta takes siamax Params, a siamax.Ensemble or an EnsembleEmbedder of plain models")
    if n == 1:
        return members[0] if len(members) == 1 else EnsembleEmbedder(members)
    transforms = augment.tta_transforms(n, seed)
    return EnsembleEmbedder(
        [
            ModelEmbedder(m.params, batch_size=m.batch_size, pair_chunk=m.pair_chunk, transform=t)
            for m in members
            for t in transforms
        ]  # fmt: skip
    )


def ink_vectors(images, ink: str) -> np.ndarray:
    """Images (N, H, W) -> float64 (N, H*W) with ink = 1, paper = 0 (uint8 divided by 255)."""
    x = np.asarray(images)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if ink == "dark":
        x = 1.0 - x
    return x.reshape(x.shape[0], -1)


class PixelEmbedder:
    """The raw-pixel baseline as an embedder: ``ink_vectors`` at the images' own size (Omniglot's
    105 x 105, MNIST as stored, a table's model format), compared by ``metric``: "euclidean" (score
    ``-distance``; polarity-independent) or "cosine" (cosine similarity of the ink vectors; an empty
    image has similarity 0). One-shot scores each task by ``score_matrix`` (the 1-NN baseline's
    formulas); pairs by ``pair_scores`` (the same measure, row by row)."""

    name = "pixels"
    head = None
    dtype = "float32"

    def __init__(self, metric: str = "euclidean"):
        if metric not in PIXEL_METRICS:
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.metric = metric

    @property
    def energy(self) -> str:
        return self.metric

    def embed(self, images, ink: str) -> np.ndarray:
        return ink_vectors(images, ink)

    def pair_scores(self, emb, i1, i2) -> np.ndarray:
        a, b = np.asarray(emb)[np.asarray(i1)], np.asarray(emb)[np.asarray(i2)]
        if self.metric == "euclidean":
            return -np.linalg.norm(a - b, axis=1)
        norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return np.where(norm > 0, (a * b).sum(1) / np.where(norm > 0, norm, 1.0), 0.0)

    def score_matrix(self, q, s) -> np.ndarray:
        """(Q, S) scores of query vectors ``q`` against support vectors ``s``."""
        if self.metric == "euclidean":
            d2 = (q * q).sum(1)[:, None] + (s * s).sum(1)[None, :] - 2 * q @ s.T
            return -np.sqrt(np.maximum(np.round(d2, 6), 0.0))
        norm = np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(s, axis=1)[None, :]
        return np.where(norm > 0, q @ s.T / np.where(norm > 0, norm, 1.0), 0.0)


class EigenfaceEmbedder(PixelEmbedder):
    """Eigenfaces (Turk & Pentland 1991), the classic face baseline: ``ink_vectors`` projected onto the
    first ``n_components`` principal components of a set of images (scikit-learn's ``PCA``, the exact
    SVD: deterministic), then compared as ``PixelEmbedder`` compares vectors (``metric``).

    :meth:`fit` must be given the *training* images only (the face experiment: the training people's,
    in model format), never those it is then scored on. Defaults (``DEFAULTS``): Turk & Pentland's plain
    eigenfaces, 100 components, not whitened, euclidean; chosen on the validation people of the face
    experiment's splits 0, 1, 2 (``siamax.data.adapters.Faces``, 35x35), where they had the lowest
    verification EER (9.4%) of 20/50/100 components x whitened or not x euclidean or cosine (whitening
    raised it to 10-15%). ``n_components`` is capped at the training images minus one."""

    name = "eigenfaces"
    DEFAULTS = {"n_components": 100, "whiten": False, "metric": "euclidean"}

    def __init__(self, n_components: int | None = None, *, whiten: bool | None = None, metric: str | None = None):
        d = self.DEFAULTS
        super().__init__(d["metric"] if metric is None else metric)
        self.n_components = int(d["n_components"] if n_components is None else n_components)
        self.whiten = bool(d["whiten"] if whiten is None else whiten)
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        self.pca = None

    def fit(self, images, ink: str = "light") -> EigenfaceEmbedder:
        """Fit the components on ``images`` (N, H, W) (the training images only); returns ``self``."""
        from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top

        x = ink_vectors(images, ink)
        k = min(self.n_components, x.shape[0] - 1, x.shape[1])
        if k < 1:
            raise ValueError(f"eigenfaces need at least 2 training images, got {x.shape[0]}")
        self.pca = PCA(n_components=k, whiten=self.whiten, svd_solver="full").fit(x)
        return self

    def embed(self, images, ink: str) -> np.ndarray:
        if self.pca is None:
            raise ValueError("EigenfaceEmbedder.embed before fit: fit it on the training images first")
        x = ink_vectors(images, ink)
        if x.shape[1] != self.pca.n_features_in_:
            raise ValueError(f"images of {x.shape[1]} pixels; the eigenfaces were fitted on {self.pca.n_features_in_}")
        return self.pca.transform(x)


def is_embedder(x) -> bool:
    return callable(getattr(x, "embed", None)) and callable(getattr(x, "pair_scores", None))


def as_embedder(model, *, score_fn: bool = False):
    """``model`` as an embedder: siamax Params -> ``ModelEmbedder``; a ``siamax.Ensemble`` ->
    ``EnsembleEmbedder`` of its members; an embedder as it is; with ``score_fn=True`` (one-shot only) a
    callable ``score_fn(x1, x2) -> (B,)`` is returned as it is."""
    if isinstance(model, api.Params):
        return ModelEmbedder(model)
    if isinstance(model, api.Ensemble):
        return EnsembleEmbedder(model.members)
    if is_embedder(model):
        return model
    if score_fn and callable(model):
        return model
    what = "siamax Params, a siamax.Ensemble, an embedder (ModelEmbedder, EnsembleEmbedder, PixelEmbedder, ...)"
    what += " or a callable score_fn(x1, x2)" if score_fn else ""
    raise TypeError(f"model must be {what}, got {type(model).__name__}")


EMBED_BLOCK = 8192  # images read and embedded at a time (a multiple of ModelEmbedder's batch size)


def embed_blocks(embedder, images, ink: str = "light", block: int | None = None):
    """``embedder``'s embeddings of ``images`` (an array, or a ``siamax.data.packed.PackedImages`` too
    large to read at once), one block of ``block`` rows (None: ``EMBED_BLOCK``) at a time: only a
    block's images are ever read into memory. A multiple of the embedder's batch size keeps every
    tower call as one call on all of ``images`` makes it."""
    block = block or EMBED_BLOCK
    for lo in range(0, len(images), block):
        yield embedder.embed(np.asarray(images[lo : lo + block]), ink)


def _joined(parts):
    if len(parts) == 1:
        return parts[0]
    return jnp.concatenate(parts) if isinstance(parts[0], jax.Array) else np.concatenate(parts)


def score_pairs(embedder, images, i1, i2, *, ink: str = "light") -> np.ndarray:
    """``embedder``'s scores of pairs of rows (i1, i2) of ``images`` (N, H, W) (e.g. a table's
    model-format images, ``ink="light"``, and ``siamax.data.make_pairs``' indices), each image that a
    pair uses embedded once."""
    i1, i2 = np.asarray(i1), np.asarray(i2)
    chex.assert_equal_shape([i1, i2])
    used, inverse = np.unique(np.concatenate([i1, i2]), return_inverse=True)
    emb = _joined(list(embed_blocks(embedder, images[used], ink)))  # only those rows read, a block at a time
    return embedder.pair_scores(emb, inverse[: len(i1)], inverse[len(i1) :])


# ---------------------------------------------------------------------------------------------
# Audio baselines on log-mel images: MFCCs, compared by dynamic time warping or by their mean.

MFCC_TOP_DB = 80.0  # siamax.audio.MelConfig.top_db: a model-format log-mel image's 255 is this many dB above 0


def mfcc(images, n_mfcc: int = 13, top_db: float = MFCC_TOP_DB) -> np.ndarray:
    """MFCCs of log-mel images: float32 (N, T, n_mfcc) from images (N, M, T) in model format
    (``siamax.audio.clips_to_images``: row = mel band, column = frame, 255 = the clip's loudest cell).

    The image is taken back to decibels (``/ 255 * top_db``, above the clip's floor) and each frame's
    mel column goes through the orthonormal DCT-II (scipy.fft.dct, librosa's ``mfcc`` convention); the
    first ``n_mfcc`` coefficients are kept, c0 (the frame's level) included. ``top_db`` scales every
    coefficient alike, so neither baseline's ranking depends on it."""
    from scipy.fft import dct  # pylint: disable=g-import-not-at-top

    x = np.asarray(images)
    if x.ndim != 3:
        raise ValueError(f"mfcc needs log-mel images (N, mel bands, frames), got shape {x.shape}")
    if not 1 <= n_mfcc <= x.shape[1]:
        raise ValueError(f"n_mfcc must be in [1, {x.shape[1]}] (the mel bands), got {n_mfcc}")
    db = x.astype(np.float32) / 255.0 * top_db if x.dtype == np.uint8 else x.astype(np.float32)
    return np.ascontiguousarray(dct(db, type=2, norm="ortho", axis=1)[:, :n_mfcc].transpose(0, 2, 1))


def voiced_spans(images) -> tuple[np.ndarray, np.ndarray]:
    """``(first, stop)`` int (N,) of each log-mel image's frames from the first to the last one with any
    energy above the floor (a clip's zero padding is all floor); an empty image keeps its frame 0."""
    x = np.asarray(images)
    active = (x > 0).any(axis=1)  # (N, T)
    has = active.any(axis=1)
    first = np.where(has, np.argmax(active, axis=1), 0)
    stop = np.where(has, x.shape[2] - np.argmax(active[:, ::-1], axis=1), 1)
    return first, stop


def dtw_distance(a, b, len_a=None, len_b=None) -> np.ndarray:
    """Dynamic-time-warping distance of each pair of sequences, float64 (B,).

    ``a`` (B, T, C) and ``b`` (B, U, C) hold frames; sequence ``k`` is ``a[k, :len_a[k]]`` against
    ``b[k, :len_b[k]]`` (default: all frames). The local cost is the Euclidean distance of two frames;
    steps (1, 0), (0, 1), (1, 1), each cost counted once; the total over the best path from the first
    frames to the last ones, divided by ``len_a + len_b`` (the usual length normalisation). The
    recurrence runs over the cells of the grid, each step vectorised over the batch of pairs; cells past
    a sequence's length never feed the cell read back (``D[len_a, len_b]``)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(f"dtw_distance needs a (B, T, C) and b (B, U, C), got {a.shape} and {b.shape}")
    n, t, u = a.shape[0], a.shape[1], b.shape[1]
    len_a = np.full(n, t) if len_a is None else np.asarray(len_a, np.int64)
    len_b = np.full(n, u) if len_b is None else np.asarray(len_b, np.int64)
    if n == 0:
        return np.zeros(0)
    if len_a.min() < 1 or len_b.min() < 1 or len_a.max() > t or len_b.max() > u:
        raise ValueError(f"sequence lengths must be in [1, {t}] and [1, {u}]")
    d2 = (a * a).sum(-1)[:, :, None] + (b * b).sum(-1)[:, None, :] - 2 * np.einsum("btc,buc->btu", a, b)
    cost = np.sqrt(np.maximum(d2, 0.0))
    acc = np.full((t + 1, u + 1, n), np.inf)  # grid-major: each cell a contiguous (B,) row
    acc[0, 0] = 0.0
    cost = cost.transpose(1, 2, 0).copy()
    for i in range(1, t + 1):
        for j in range(1, u + 1):
            acc[i, j] = cost[i - 1, j - 1] + np.minimum(np.minimum(acc[i - 1, j], acc[i, j - 1]), acc[i - 1, j - 1])
    return acc[len_a, len_b, np.arange(n)] / (len_a + len_b)


class MfccDtwEmbedder:
    """MFCC + dynamic time warping, the classic template matcher for isolated words (Sakoe & Chiba 1978),
    as an embedder: ``embed`` gives each log-mel image's MFCC sequence (``mfcc``) over its voiced span
    (``voiced_spans``: the zero padding cut off), left-aligned in (N, T, n_mfcc) with NaN past its end;
    ``pair_scores`` is ``-dtw_distance`` of the pairs (higher = more alike), in chunks of ``pair_chunk``.
    Without c0 by default (``c0=False``: c1..c12 of 13): on the spoken-digit validation tasks (held-out
    takes of the training speakers, folds 0-2, 10-way cross-speaker) 46% against 42% with it.
    A pairwise score, not a vector space: it serves the one-shot and verification evaluators (which score
    pairs of embedded rows: the nearest support clip by DTW wins, i.e. 1-NN), not retrieval."""

    name = "mfcc_dtw"
    energy = "dtw"  # no siamax.energies ranking: not for Retrieval
    head = None
    dtype = "float32"

    def __init__(self, n_mfcc: int = 13, *, c0: bool = False, pair_chunk: int = 4096):
        self.n_mfcc, self.c0, self.pair_chunk = int(n_mfcc), bool(c0), int(pair_chunk)

    def embed(self, images, ink: str = "light") -> np.ndarray:
        del ink  # log-mel images are model format: 255 = loud
        coeffs = mfcc(images, self.n_mfcc)[:, :, (0 if self.c0 else 1) :]
        first, stop = voiced_spans(images)
        out = np.full_like(coeffs, np.nan)
        for k, (lo, hi) in enumerate(zip(first, stop)):
            out[k, : hi - lo] = coeffs[k, lo:hi]
        return out

    def pair_scores(self, emb, i1, i2) -> np.ndarray:
        emb = np.asarray(emb)
        lengths = (~np.isnan(emb[:, :, 0])).sum(1)
        frames = np.nan_to_num(emb)
        i1, i2 = np.asarray(i1), np.asarray(i2)
        out = [
            -dtw_distance(frames[a], frames[b], lengths[a], lengths[b])
            for a, b in ((i1[lo : lo + self.pair_chunk], i2[lo : lo + self.pair_chunk])
                         for lo in range(0, len(i1), self.pair_chunk))
        ]  # fmt: skip
        return np.concatenate(out) if out else np.zeros(0)


class MfccMeanEmbedder(PixelEmbedder):
    """Mean MFCCs, the bag-of-frames baseline: each log-mel image's ``mfcc`` averaged over its voiced span
    (``voiced_spans``), (N, n_mfcc), compared as ``PixelEmbedder`` compares vectors (cosine similarity by
    default), so one-shot scores 1-NN by cosine and verification thresholds the cosine. c0 is kept: on the
    spoken-digit validation tasks dropping it made no consistent difference (27% against 27%)."""

    name = "mfcc_cosine"

    def __init__(self, n_mfcc: int = 13, metric: str = "cosine"):
        super().__init__(metric)
        self.n_mfcc = int(n_mfcc)

    def embed(self, images, ink: str = "light") -> np.ndarray:
        del ink
        coeffs = mfcc(images, self.n_mfcc)
        first, stop = voiced_spans(images)
        t = np.arange(coeffs.shape[1])
        mask = ((t >= first[:, None]) & (t < stop[:, None]))[:, :, None]
        return ((coeffs * mask).sum(1) / mask.sum(1)).astype(np.float64)
