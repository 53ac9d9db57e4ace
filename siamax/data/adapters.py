"""Dataset adapters: what the one pipeline (``siamax.experiment.train_and_evaluate``) needs of a dataset.

An adapter turns a dataset into a :class:`Prepared` run: the training table (``LabelledImages``), the
validation tasks that choose the checkpoint, the validation pairs that choose the same/different
threshold (and the rule), and the named test sets with the protocol that scores each
(:class:`TestSet`: a key of ``siamax.evaluators.REGISTRY`` and its arguments). Test sets are built only
when asked for, after training: model selection never sees them.

* :class:`Omniglot`: the paper's setup (30 background alphabets to train; the 10 evaluation alphabets
  Lake's runs do not use to validate; Lake's 20 runs, within-alphabet N-way tasks, random N-way K-shot
  episodes, verification and retrieval on the test alphabets).
* :class:`MnistTransfer`: Omniglot's, plus the paper's 10-way one-shot MNIST transfer test.
* :class:`ImageFolder`: a user's folder of classes, of images or of sound clips (:func:`folder_kind`
  tells which, :func:`read_folder` / :func:`read_files` read either kind into the one table), split by
  class (``class_splits``, a manifest); for a small folder, validation on held-out images of the
  training classes.
* :func:`folder_tests`: the test sets of a table whose classes are all new to the model (``siamax
  evaluate`` and ``ImageFolder``'s test part).
* :class:`Faces`: ORL faces split by person (train / validation / test people, seeded): verification
  and N-way one-shot identification of unseen people, next to raw pixels and eigenfaces.
* :class:`SpokenDigits`: FSDD in speaker folds (4 training, 2 unseen test speakers): cross-speaker one-shot
  word recognition (10-way, and N-way over digits held out of training) or speaker verification, next to
  MFCC + DTW, mean MFCCs and raw log-mel pixels.

Each test set also names the baseline embedders run through the same evaluator on the same trials
(``"pixels"``: raw pixels, Euclidean; ``"pixels_cosine"``; ``"eigenfaces"``, fitted on the run's
training images, ``Prepared.baseline_fit``). The pipeline writes a test set's result
under its name, a baseline's under ``results[baseline][name]``; a name ``"a/b"`` nests as
``results[a][b]``, and the groupings of a one-shot test set (``by``) go to ``results[name]["by"]`` (the
first) and ``results["by_" + grouping][name]`` (the others). ``legacy`` keeps the keys earlier
versions wrote (``one_nn`` = ``pixels/lake20``) for the code that reads them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from siamax import rng
from siamax.data import folder as fo
from siamax.data import lake, mnist, omniglot, orl, packed, samplers, splits, tasks
from siamax.data.audio_folder import (
    DecodedClips,
    audio_files,
    audio_folder,
    clips_to_model_format,
    decode_clip_bytes,
    is_audio_file,
    is_audio_folder,
)
from siamax.data.class_splits import class_splits, hold_out, small_folder_sizes
from siamax.data.labelled import LabelledImages
from siamax.data.require import require
from siamax.errors import InputError

# Koch et al. (2015), tables 2-4 (see ../shared/koch2015.md): what the Omniglot adapters report beside.
PAPER = {
    "lake20": 92.0,
    "within_alphabet": 92.0,
    "one_nn": 21.7,
    "mnist10": 70.3,
    "mnist10_one_nn": 26.5,
    "verification": {"30k": 90.61, "90k": 91.54, "150k": 91.63, "30k_x9": 91.90, "90k_x9": 93.15, "150k_x9": 93.42},
}


@dataclasses.dataclass(frozen=True)
class TestSet:
    """A named test set: ``kind`` (a key of ``siamax.evaluators.REGISTRY``) and the evaluator's
    arguments; ``model_args`` go to the model's run only (e.g. a stored threshold); ``baselines`` are
    the other embedders scored on the same trials."""

    kind: str
    args: Mapping
    baselines: tuple[str, ...] = ("pixels",)
    model_args: Mapping = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """A dataset made ready for one run (an adapter's ``prepare_run``)."""

    train: LabelledImages
    validation_tasks: list  # choose the checkpoint (one-shot accuracy)
    threshold_images: np.ndarray  # model-format images of the validation pairs ...
    threshold_pairs: samplers.Pairs  # ... that choose the same/different threshold
    threshold_rule: str  # siamax.metrics.choose_threshold's rule
    tests: Callable[[], Mapping[str, TestSet]]  # built after training only (a LazySets draws each when read)
    ink: str  # the polarity of the raw training images (goes with the model)
    summary: str  # printed before training
    write_manifest: Callable[[Path], None] = lambda workdir: None  # the split, into the work directory
    info: Mapping = dataclasses.field(default_factory=dict)  # results["data"]
    legacy: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    paper: Mapping | None = None  # the published numbers to report beside
    trial_grid: Callable[[], list] | None = None  # tasks for the one-shot trial figure
    extra: Mapping = dataclasses.field(default_factory=dict)  # more top-level results keys
    baseline_fit: np.ndarray | None = None  # training images (model format) a fitted baseline learns from


class Dataset(Protocol):
    """What ``train_and_evaluate`` takes: ``Omniglot``, ``MnistTransfer``, ``ImageFolder`` (and the next
    adapters: faces, audio) are ones."""

    name: str
    identity: dict  # what tells two runs on this dataset apart beyond the config (e.g. the folder)

    def requires(self, test: bool) -> list[str]:
        """The archives the run reads (``siamax.data.require``), test sets included when ``test``."""
        ...

    def prepare_run(self, cfg) -> Prepared:
        """Read the data for a run of ``cfg``: touches no file of the work directory (``Prepared.write_manifest``)."""
        ...


def _pairs_of(table: LabelledImages, n: int, seed) -> tuple[np.ndarray, samplers.Pairs]:
    pairs = samplers.make_pairs(table, n, seed=seed)
    if not isinstance(table.images, packed.PackedImages):
        return np.asarray(table.images), pairs
    # A packed part may be larger than memory: read only the images the pairs use (the same pairs).
    used, inverse = np.unique(np.concatenate([pairs.i1, pairs.i2]), return_inverse=True)
    i1, i2 = np.split(inverse.astype(pairs.i1.dtype), 2)
    return table.images.read(used), samplers.Pairs(i1, i2, pairs.label)


# ---------------------------------------------------------------------------------------------
# Omniglot and the MNIST transfer.


def _alphabet(task) -> str:
    return task.alphabet


def _name(task) -> str:
    return task.name


def _lake_task(task) -> str:
    """ "run07: Gurmukhi, drawers 5->2" (support drawer -> query drawer, from the data README)."""
    alphabet, a, b = lake.LAKE_RUNS[int(task.name[3:]) - 1]
    return f"{task.name}: {alphabet}, drawers {a}->{b}"


@dataclasses.dataclass(frozen=True)
class Omniglot:
    """The main job's data: Omniglot in the paper's splits (``siamax.data.paper_splits``)."""

    name = "omniglot"
    identity = {}  # nothing beyond the config tells two Omniglot runs apart

    def requires(self, test: bool) -> list[str]:
        return ["omniglot", "lake_runs"] if test else ["omniglot"]

    def prepare_run(self, cfg) -> Prepared:
        t0 = time.perf_counter()
        table = omniglot.omniglot_table(omniglot.load_omniglot(), cfg.spec)  # model format, on the device
        sp = splits.paper_splits(cfg.data.split_seed, train_drawers=cfg.data.train_drawers)
        seeds = rng.eval_seeds(cfg.eval.eval_seed)
        val = sp.validation
        val_tasks = tasks.validation_tasks(
            table, val.alphabets, val.drawers, trials=cfg.eval.val_trials, seed=seeds["validation_tasks"]
        )
        val_table = table.take(val.flat_indices(), name="omniglot/validation")
        images, pairs = _pairs_of(val_table, cfg.eval.verification_pairs, seeds["verification_validation"])
        train = table.take(sp.train.flat_indices(), name="omniglot/train")
        summary = (
            f"data ready in {time.perf_counter() - t0:.1f}s: {len(sp.train.char_ids)} training characters x "
            f"{len(sp.train.drawers)} drawers, {len(val_tasks)} validation tasks "
            f"({sum(len(t.query) for t in val_tasks)} trials)"
        )
        return Prepared(
            train=train,
            validation_tasks=val_tasks,
            threshold_images=images,
            threshold_pairs=pairs,
            threshold_rule="accuracy",  # the paper's: the most accurate threshold on validation pairs
            tests=lambda: omniglot_tests(cfg, table, sp, (images, pairs)),
            ink="dark",
            summary=summary,
            write_manifest=lambda workdir: sp.save(workdir / "splits.json"),
            info={
                "name": "omniglot",
                "images": table.n_images,
                "classes": table.n_classes,
                "train_images": train.n_images,
                "train_classes": train.n_classes,
            },
            legacy={
                "one_nn": ("pixels", "lake20"),
                "one_nn_cosine": ("pixels_cosine", "lake20"),
                "one_nn_within_alphabet": ("pixels", "within_alphabet"),
            },
            paper=PAPER,
            trial_grid=lake.lake_runs,
        )


class LazySets(Mapping):
    """Named test sets, each built when first read: a run with ``--test-sets`` draws only those it
    names (Omniglot's 19 within-alphabet n-way sets take seconds to draw)."""

    def __init__(self, makers: Mapping[str, Callable[[], TestSet]]):
        self._makers, self._built = dict(makers), {}

    def __getitem__(self, name: str) -> TestSet:
        if name not in self._built:
            self._built[name] = self._makers[name]()
        return self._built[name]

    def __iter__(self):
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def __or__(self, other: Mapping[str, TestSet]) -> LazySets:
        """Both sets of sets, still each built when first read (and once: by the mapping it came from)."""
        return LazySets({n: functools.partial(m.__getitem__, n) for m in (self, other) for n in m})


def omniglot_tests(cfg, table: LabelledImages, sp: splits.Splits, validation) -> LazySets:
    """Every trial and pair the main job scores, drawn from ``cfg.eval.eval_seed`` alone, so runs with
    different training seeds are scored on identical sets (each set is drawn alone: ``LazySets``)."""
    seeds = rng.eval_seeds(cfg.eval.eval_seed)
    shuffle = seeds["test_candidates"]
    test = sp.test

    @functools.cache
    def test_table():
        return table.take(test.flat_indices(), name="omniglot/test")

    @functools.cache
    def within(n: int):
        return tasks.within_alphabet_tasks(
            table, test.alphabets, test.drawers, per_alphabet=2, n_way=n, seed=seeds["test_tasks"]
        )

    def oneshot(tasks_, baselines=("pixels",), **kw):
        return TestSet("oneshot", {"tasks": tasks_, "seed": shuffle, **kw}, baselines)

    def random(n: int, k: int) -> TestSet:
        # Vinyals-style: classes drawn across the 10 test alphabets, from all 20 drawers of their characters
        # (the test alphabets never enter training, so their other drawers are test data too); 400 trials each.
        all_drawers = table.of_classes(test.chars, name="omniglot/test, all 20 drawers")
        episodes = tasks.episodes(
            all_drawers, n_way=n, k_shot=k, n_query=1, n_episodes=400 // n, seed=[seeds["random_tasks"], n, k]
        )
        return oneshot(episodes)

    makers = {
        "lake20": lambda: oneshot(
            lake.lake_runs(), ("pixels", "pixels_cosine"), by={"alphabet": _alphabet, "task": _lake_task}
        ),
        "within_alphabet": lambda: oneshot(within(20), by={"alphabet": _alphabet, "task": _name}),
        **{f"random_{n}way_{k}shot": functools.partial(random, n, k) for n, k in ((20, 1), (5, 1), (20, 5))},
        # The threshold is chosen on validation pairs (model selection), accuracy measured on test pairs.
        "verification": lambda: TestSet(
            "verification",
            {
                "images": np.asarray(test_table().images),
                "pairs": samplers.make_pairs(
                    test_table(), cfg.eval.verification_pairs, seed=seeds["verification_test"]
                ),
                "validation": validation,
                "rule": "accuracy",
            },
        ),
        "retrieval": lambda: TestSet(
            "retrieval",
            {
                "images": np.asarray(test_table().images),
                "labels": test_table().labels,
                "seed": seeds["retrieval_queries"],
            },
        ),
        **{
            f"nway_within_alphabet/{n}": functools.partial(lambda n: oneshot(within(n), baselines=()), n)
            for n in range(2, 21)
        },
    }
    return LazySets(makers)


@dataclasses.dataclass(frozen=True)
class MnistTransfer(Omniglot):
    """The paper's MNIST transfer (section 5): trained and validated as on Omniglot, then also tested by
    10-way one-shot on MNIST's *test* set with no fine-tuning (``trials`` trials)."""

    trials: int = 400
    name = "mnist_transfer"

    def requires(self, test: bool) -> list[str]:
        return super().requires(test) + (["mnist"] if test else [])

    def prepare_run(self, cfg) -> Prepared:
        prepared = super().prepare_run(cfg)
        omniglot_sets = prepared.tests
        return dataclasses.replace(
            prepared,
            tests=lambda: (
                omniglot_sets()
                | LazySets({"mnist10": lambda: mnist_tests(cfg.spec, cfg.eval.eval_seed, self.trials)["mnist10"]})
            ),
            legacy={**prepared.legacy, "mnist10_one_nn": ("pixels", "mnist10")},
            extra={"mnist10_eval_seed": cfg.eval.eval_seed},
        )


def mnist_tests(spec, eval_seed: int, trials: int = 400) -> dict[str, TestSet]:
    """``{"mnist10": ...}``: 10-way one-shot on MNIST's test set; the trials come from ``eval_seed`` alone."""
    seeds = rng.eval_seeds(eval_seed)
    digits = mnist.mnist_table(mnist.load_mnist(), spec, "test")
    trial_tasks = tasks.mnist_tasks(digits, n_trials=trials, seed=seeds["transfer_tasks"])
    return {"mnist10": TestSet("oneshot", {"tasks": trial_tasks, "seed": seeds["test_candidates"]})}


# ---------------------------------------------------------------------------------------------
# A folder of one's own images.


def folder_tests(
    table: LabelledImages,
    *,
    eval_seed: int = 0,
    n_way: int = 5,
    shots: int = 1,
    trials: int = 400,
    pairs: int = 10_000,
    validation=None,
    rule: str = "eer",
    threshold: float | None = None,
    threshold_from: str = "given",
) -> dict[str, TestSet]:
    """The test sets of a table whose classes are all new to the model: verification pairs (half same,
    half different), ``n_way``-way ``shots``-shot episodes with one query per class (``trials``
    queries: ``trials / n_way`` episodes), and retrieval (every image a query against all others).

    The model's same/different threshold: ``threshold`` (a stored model's, chosen on its validation
    classes: ``threshold_from`` says so), else chosen by ``rule`` on ``validation`` = (images, pairs); the
    pixel baseline gets its
    own by the same rule on the same validation pairs (without any: the EER threshold of the test pairs
    themselves, flagged as optimistic in the result).
    """
    tasks.require_classes(table, max(n_way, 2), f"a {n_way}-way {shots}-shot evaluation", per_class=shots + 1)
    seeds = rng.eval_seeds(eval_seed)
    images = table.images  # a packed table's stay on disk: each evaluator reads the rows it uses
    verification = {
        "images": images,
        "pairs": samplers.make_pairs(table, pairs, seed=seeds["verification_test"]),
        "validation": validation,
        "rule": rule,
    }
    episodes = tasks.episodes(
        table, n_way=n_way, k_shot=shots, n_query=1, n_episodes=math.ceil(trials / n_way), seed=seeds["test_tasks"]
    )
    return {
        "verification": TestSet(
            "verification",
            verification,
            model_args={} if threshold is None else {"threshold": threshold, "threshold_from": threshold_from},
        ),
        f"random_{n_way}way_{shots}shot": TestSet("oneshot", {"tasks": episodes, "seed": seeds["test_candidates"]}),
        "retrieval": TestSet(
            "retrieval", {"images": images, "labels": table.labels, "seed": seeds["retrieval_queries"]}
        ),
    }


MODALITIES = ("ink", "photos", "audio")  # what a folder of one's own holds (folder_kind)
_KIND_SAMPLE = 256  # images folder_kind decodes (spread over the folder) to tell photos from ink drawings
_PAPER_SHARE = 0.5  # ink drawings: at least this share of an image's pixels is paper (median over the sample)


@dataclasses.dataclass(frozen=True)
class FolderKind:
    """What a folder holds (:func:`folder_kind`): ``modality`` "ink" (drawings: ink on plain paper),
    "photos" or "audio" (sound clips), and ``color`` "rgb" or "gray" (the images' channels; "gray" for
    audio), with what told it: over ``n_looked`` decoded images, ``n_colour`` had colour, ``paper`` is
    the median border brightness and ``paper_share`` the median share of pixels as bright (or as dark)
    as paper (NaN for audio)."""

    modality: str
    color: str
    n_looked: int = 0
    n_colour: int = 0
    paper: float = math.nan
    paper_share: float = math.nan

    def describe(self) -> str:
        """E.g. "a folder of colour photos (12 of 40 images looked at have colour)"."""
        if self.modality == "audio":
            return "a folder of audio clips"
        looked = f"of {self.n_looked} images looked at"
        if self.n_colour:
            return f"a folder of colour photos ({self.n_colour} {looked} have colour)"
        paper = f"median border brightness {self.paper:.2f}, {self.paper_share:.0%} of the pixels paper-like"
        what = "gray photos" if self.modality == "photos" else "ink drawings"
        return f"a folder of {what} ({paper}, {looked})"


def folder_kind(path, *, color: str = "auto", layout: str = "auto") -> FolderKind:
    """Whether the folder ``path`` holds sound clips (``siamax.data.is_audio_folder``: by the files'
    extensions), photos or ink drawings, and in what colour, told from up to ``_KIND_SAMPLE`` of its
    images spread over the folder (decoded by ``image_folder``'s route, at a small size):

    * colour: some image has colour (``image_folder``'s rule), unless ``color`` forces "rgb" / "gray";
    * photos: some image has colour, or the borders cannot tell a polarity (``image_folder``'s ink rule:
      median paper brightness within 0.5 +- 0.1), or fewer than half the pixels of the median image are
      paper (as bright as light paper, >= 0.75, or as dark as dark paper, <= 0.25): a photo's background
      is not plain paper (ORL's faces: 22%);
    * ink drawings otherwise (Omniglot, MNIST, scans: 80-95% paper).

    Raises ``image_folder``'s errors for a folder it cannot read (missing, no class folders, ...)."""
    if color not in fo.COLORS:
        raise InputError(f"color must be one of {fo.COLORS}, got {color!r}")
    root = Path(path).expanduser()
    if packed.is_packed(root):
        manifest = packed.read_manifest(root)
        return FolderKind(manifest["modality"], "rgb" if manifest["channels"] == 3 else "gray")
    if is_audio_folder(root):
        return FolderKind("audio", "gray")
    if not root.is_dir():
        fo.image_folder(root, size=8)  # the DataError saying what is missing
    _, classes, _ = fo._scan(root.resolve(), layout)  # pylint: disable=protected-access
    files = [p for _, _, paths in classes for p in paths]
    if not files:
        fo.image_folder(root, size=8, layout=layout)  # the InputError saying what is there instead
    picks = np.unique(np.linspace(0, len(files) - 1, min(len(files), _KIND_SAMPLE)).round().astype(int))
    decoded = [fo._decode(root / files[i], 32) for i in picks]  # pylint: disable=protected-access
    images = [(x, paper) for x, paper, _ in decoded if x is not None and paper is not None]
    n_colour = sum(fo._has_colour(x) for x, _ in images)  # pylint: disable=protected-access
    channels = {"rgb": "rgb", "gray": "gray"}.get(color, "rgb" if n_colour else "gray")
    if not images:
        return FolderKind("photos" if n_colour else "ink", channels)
    paper = float(np.median([p for _, p in images]))
    share = float(np.median([_paper_share(x, p) for x, p in images]))
    ink = not n_colour and abs(paper - 0.5) >= fo._AMBIGUOUS and share >= _PAPER_SHARE  # pylint: disable=protected-access
    return FolderKind("ink" if ink else "photos", channels, len(images), n_colour, paper, share)


def _paper_share(x: np.ndarray, paper: float) -> float:
    """The share of an image's pixels on its paper's side: luma >= 0.75 on light paper, <= 0.25 on dark."""
    v = fo._unit(x)  # pylint: disable=protected-access
    if v.ndim == 3:
        v = v[..., :3] @ np.float32([0.299, 0.587, 0.114]) if v.shape[-1] >= 3 else v[..., 0]
    return float((v >= 0.75).mean() if paper > 0.5 else (v <= 0.25).mean())


def _photo_ink(modality: str, ink: str, fallback: str | None) -> str:
    """Photos keep their own values (ink "light", as ``siamax.data.orl``) unless told otherwise: no
    polarity is guessed from a photo's borders; a model's stored polarity (``fallback``) wins."""
    if modality != "photos" or ink != "auto":
        return ink
    return fallback if fallback in ("dark", "light") else "light"


def _refuse_modality(where, audio: bool, modality: str, files: bool = False) -> None:
    """The one error line for files (``files``) or a folder of the other kind than the model's ``modality``."""
    holds = ("is", "are")[files and ", " in str(where)] if files else "holds"
    if audio and modality != "audio":
        raise InputError(
            f"{where} {holds} audio, but the model was trained on images ({modality}): give images, or a "
            "model that 'siamax train' trained on a folder of clips"
        )
    if not audio and modality == "audio":
        raise InputError(
            f"{where} {holds} {'not audio' if files else 'images'}, but the model was trained on audio clips: "
            "give .wav or .flac files (a folder DIR/<class>/<clip>), or a model trained on images"
        )


def read_folder(
    path,
    spec,
    *,
    modality: str,
    ink: str = "auto",
    layout: str = "auto",
    color: str = "auto",
    mel=None,
    min_images: int = 2,
    progress: bool | None = None,
    fallback: str | None = None,
):
    """A class folder of ``modality`` (:data:`MODALITIES`) as the one table, for the model ``spec``:
    ``(LabelledImages, report, ink)``. Images through ``image_folder`` (photos keep their own values
    unless ``ink`` says otherwise: :func:`_photo_ink`), sound clips through ``audio_folder`` with the
    front-end ``mel`` (a ``siamax.audio.MelConfig``; None: ``MelConfig.square`` of the input size), as
    1-channel log-mel images ("light": 255 = loudest). A folder of the other kind is refused. A packed
    dataset (``siamax pack``) is read as it was packed: its images stay on disk, read on demand."""
    if packed.is_packed(path):
        table, manifest = packed.load_packed(path, spec)
        _refuse_modality(path, manifest["modality"] == "audio", modality)
        return table, packed.PackedReport.of(path, manifest), manifest["ink"]
    _refuse_modality(path, is_audio_folder(path), modality)
    if modality == "audio":
        table, report = audio_folder(path, size=spec, config=mel, min_clips=min_images, progress=progress)
        return table, report, "light"
    chosen = _photo_ink(modality, ink, fallback)
    table, report = fo.image_folder(
        path, size=spec, layout=layout, ink=chosen, min_images=min_images, progress=progress, color=color
    )
    if chosen != ink:  # photos: not "given" by the user, and not read off the borders either
        how = "the model's" if fallback in ("dark", "light") else "photos keep their stored values"
        report = dataclasses.replace(report, ink_how=how)
    return table, report, report.ink


def check_files(paths, modality: str) -> None:
    """Refuse (InputError naming them) files of another kind than ``modality``, by their extensions."""
    other = [str(p) for p in paths if is_audio_file(p) != (modality == "audio")]
    if other:
        _refuse_modality(fo._some(other), modality != "audio", modality, files=True)  # pylint: disable=protected-access


def read_files(paths, spec, *, modality: str, ink: str = "auto", fallback: str | None = None, mel=None):
    """Single files (to verify, to identify) by :func:`read_folder`'s route: model-format images on the
    device. Files of the other kind than ``modality`` are refused, naming them."""
    check_files(paths, modality)
    if modality == "audio":
        return audio_files(paths, size=spec, config=mel)
    x, _ = fo.image_files(paths, size=spec, ink=_photo_ink(modality, ink, fallback), fallback=fallback)
    return x


def decode_bytes(blobs, spec, *, modality: str, ink: str = "auto", fallback: str | None = None, mel=None, names=None):
    """:func:`read_bytes` up to the model format: the uploads decoded and checked on the host (a
    ``folder.Decoded`` or an ``audio_folder.DecodedClips``), for :func:`to_model_format` to convert,
    those of many requests at once (``siamax serve``). The bytes carry no extension, so they are decoded
    as ``modality`` says (what is not, is InputError)."""
    if modality == "audio":
        return decode_clip_bytes(blobs, size=spec, config=mel, names=names)
    return fo.decode_bytes(blobs, size=spec, ink=_photo_ink(modality, ink, fallback), fallback=fallback, names=names)


def to_model_format(batch: Sequence, *, pad: bool = False) -> np.ndarray:
    """The model format of every upload of ``batch`` (results of :func:`decode_bytes` for one model), in
    order. ``pad``: images converted in groups padded to powers of two (for a server's varying batches)."""
    if batch and isinstance(batch[0], DecodedClips):
        return clips_to_model_format(batch)
    return fo.to_model_format(batch, pad=pad)


def read_bytes(blobs, spec, *, modality: str, ink: str = "auto", fallback: str | None = None, mel=None, names=None):
    """:func:`read_files` for files held in memory (uploads to ``siamax serve``): the same decoders and route."""
    decoded = decode_bytes(blobs, spec, modality=modality, ink=ink, fallback=fallback, mel=mel, names=names)
    return to_model_format([decoded])


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A folder ``DIR/<class>/<image>`` (or ``DIR/<group>/<class>/<image>``) split by class into train,
    validation and test (``fractions``, seeded, a manifest in the work directory).

    Small folders (``siamax.data.class_splits.small_folder_sizes``): a validation part of fewer than 2 classes is
    merged into training and the checkpoint and threshold are chosen on held-out images of the training
    classes instead (``siamax.data.class_splits.hold_out``: 2 images of every class that has 4 or more); where no
    class has 4, on the training images themselves (said so: an optimistic choice). A test part of fewer
    than 2 classes is left empty (evaluate elsewhere with ``siamax evaluate``).

    Images or sound clips (``DIR/<class>/<clip>``): ``modality`` "auto" tells them apart
    (:func:`folder_kind`), and :func:`read_folder` reads either into the one table (clips as log-mel
    images through the front-end ``mel``, None: ``MelConfig.square`` of the input size); all that
    follows is shared. The modality (and the front-end) of a folder of photos or clips goes into
    ``identity``, hence into the exported model's metadata, so the commands read new files as in training.
    """

    path: str | Path
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    ink: str = "auto"
    layout: str = "auto"
    progress: bool = True
    modality: str = "auto"  # "auto" (folder_kind), or one of MODALITIES
    color: str = "auto"  # image_folder's: under "auto" the model's channels decide
    mel: object = None  # siamax.audio.MelConfig of a folder of clips (None: MelConfig.square(input size))
    name = "folder"

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    @functools.cached_property
    def kind(self) -> str:
        """The modality: given, or told from the folder."""
        if self.modality == "auto":
            return folder_kind(self.root, color=self.color, layout=self.layout).modality
        if self.modality not in MODALITIES:
            raise InputError(f"modality must be 'auto' or one of {MODALITIES}, got {self.modality!r}")
        return self.modality

    @property
    def identity(self) -> dict:
        out = {"data": str(self.root), "fractions": list(self.fractions)}
        if self.kind != "ink":  # ink drawings, the first kind, record nothing: their runs resume as before
            out["modality"] = self.kind
        if self.kind == "audio" and self.mel is not None:
            out["mel"] = dataclasses.asdict(self.mel)
        return out

    def requires(self, test: bool) -> list[str]:
        return []

    def prepare_run(self, cfg) -> Prepared:
        table, report, ink = read_folder(
            self.root,
            cfg.spec,
            modality=self.kind,
            ink=self.ink,
            layout=self.layout,
            color=self.color,
            mel=self.mel,
            progress=self.progress,
        )
        seeds = rng.eval_seeds(cfg.eval.eval_seed)
        sizes = small_folder_sizes(table.n_classes, self.fractions)
        split = class_splits(table, self.fractions, seed=cfg.data.split_seed, sizes=sizes)
        train, val, test = split.parts()
        note = ""
        if val.n_classes < 2:
            train, held = hold_out(train, seed=seeds["validation_holdout"])
            if held is not None and held.n_classes >= 2:
                val = held
                note = (
                    f"validation: {held.n_images} held-out images of {held.n_classes} training classes (too few "
                    "classes for a validation part of their own)"
                )
            else:
                val = train
                note = (
                    "validation: the training images themselves (too few classes for a validation part and too few "
                    "images to hold any out): the checkpoint and threshold choice is optimistic"
                )
        n_way = min(20, val.n_classes)
        val_tasks = tasks.episodes(
            val,
            n_way=n_way,
            n_query=1,
            n_episodes=math.ceil(cfg.eval.val_trials / n_way),
            seed=seeds["validation_tasks"],
        )
        images, pairs = _pairs_of(val, cfg.eval.verification_pairs, seeds["verification_validation"])
        lines = [
            report.summary(),
            f"classes: {train.n_classes} train, {split.validation.n_classes} validation, {test.n_classes} test "
            f"(images {train.n_images} / {split.validation.n_images} / {test.n_images}); validation: {len(val_tasks)} "
            f"{n_way}-way one-shot tasks",
        ]
        if note:
            lines.append(note)
        most = int(train.class_counts().max())
        if cfg.objective.kind != "pairs" and cfg.data.episode_drawers > most:
            lines.append(
                f"batches: {cfg.data.episode_drawers} images a class (--episode-drawers) but no training class has "
                f"more than {most}: images repeat within a class"
            )
        if test.n_classes < 2:
            lines.append(
                "test: none (too few classes to hold 2 out); evaluate the model elsewhere with siamax evaluate"
            )

        def tests():
            if test.n_classes < 2:
                return {}
            return folder_tests(
                test,
                eval_seed=cfg.eval.eval_seed,
                n_way=min(5, test.n_classes),
                pairs=cfg.eval.verification_pairs,
                validation=(images, pairs),
                rule="eer",
            )

        def write_manifest(workdir: Path) -> None:
            # The manifest: written on the first run; a rerun on a changed folder is refused.
            kept = class_splits(
                table, self.fractions, seed=cfg.data.split_seed, sizes=sizes, manifest=workdir / "splits.json"
            )
            if [t.class_names for t in kept.parts()] != [t.class_names for t in split.parts()]:
                raise InputError(
                    f"{workdir / 'splits.json'} holds another class split than the one drawn now; use another --workdir"
                )

        return Prepared(
            train=train,
            validation_tasks=val_tasks,
            threshold_images=images,
            threshold_pairs=pairs,
            threshold_rule="eer",
            tests=tests,
            ink=ink,
            summary="\n".join(lines),
            write_manifest=write_manifest,
            info={
                "name": table.name,
                "images": table.n_images,
                "classes": table.n_classes,
                "groups": table.n_groups,
                "classes_per_part": [train.n_classes, split.validation.n_classes, test.n_classes],
                "validation": note or "validation classes",
                "folder": dataclasses.asdict(report),
            },
        )


# ---------------------------------------------------------------------------------------------
# Faces: ORL split by person.


def face_splits(table: LabelledImages, people: Sequence[int] = (26, 6, 6), seed: int = 0):
    """``siamax.data.class_splits`` of a face table by person: ``people`` = how many people go to
    train, validation and test (no person in two parts), drawn from ``seed``."""
    people = tuple(int(k) for k in people)
    if len(people) != 3 or min(people) < 0 or people[0] < 1 or sum(people) != table.n_classes:
        raise InputError(
            f"people {list(people)} must be 3 counts (train >= 1, validation, test) adding up to the "
            f"{table.n_classes} people of {table.name or 'the table'}"
        )
    return class_splits(table, tuple(k / sum(people) for k in people), seed=seed, sizes=people)


@dataclasses.dataclass(frozen=True)
class Faces:
    """ORL faces (``siamax.data.orl``), split by person with ``cfg.data.split_seed`` (``face_splits``):
    trained on the training people only; the checkpoint (``N``-way one-shot accuracy, N = the
    validation people) and the same/different threshold (the most accurate on validation pairs) are
    chosen on the validation people only; tested on the unseen test people (:func:`face_tests`), next
    to raw pixels and eigenfaces (PCA fitted on the training people's images) on the same trials."""

    people: tuple[int, int, int] = (26, 6, 6)
    name = "faces"

    @property
    def identity(self) -> dict:
        return {"people": list(self.people)}

    def requires(self, test: bool) -> list[str]:
        return ["orl_faces"]

    def prepare_run(self, cfg) -> Prepared:
        t0 = time.perf_counter()
        data = orl.load_orl()
        table = orl.orl_table(data, cfg.spec)  # model format, on the device
        split = face_splits(table, self.people, cfg.data.split_seed)
        train, val, test = split.parts()
        tasks.require_classes(val, 2, "the validation people's one-shot tasks", per_class=2)
        seeds = rng.eval_seeds(cfg.eval.eval_seed)
        n_way = val.n_classes
        val_tasks = tasks.episodes(
            val,
            n_way=n_way,
            n_query=1,
            n_episodes=math.ceil(cfg.eval.val_trials / n_way),
            seed=seeds["validation_tasks"],
        )
        images, pairs = _pairs_of(val, cfg.eval.verification_pairs, seeds["verification_validation"])
        summary = (
            f"data ready in {time.perf_counter() - t0:.1f}s: ORL faces, people {train.n_classes} train / "
            f"{val.n_classes} validation / {test.n_classes} test (split seed {cfg.data.split_seed}), "
            f"{table.size}x{table.size}; validation: {len(val_tasks)} {n_way}-way one-shot tasks"
        )
        return Prepared(
            train=train,
            validation_tasks=val_tasks,
            threshold_images=images,
            threshold_pairs=pairs,
            threshold_rule="accuracy",
            tests=lambda: face_tests(cfg, test, (images, pairs)),
            ink=data.ink,
            summary=summary,
            write_manifest=lambda workdir: split.save(workdir / "splits.json"),
            info={
                "name": "orl_faces",
                "images": table.n_images,
                "classes": table.n_classes,
                "split_seed": cfg.data.split_seed,
                "people_per_part": [t.n_classes for t in split.parts()],
                "people": {p: list(t.class_names) for p, t in zip(("train", "validation", "test"), split.parts())},
            },
            baseline_fit=np.asarray(train.images),  # eigenfaces: fitted on the training people only
        )


FACE_BASELINES = ("pixels", "eigenfaces")


def face_tests(cfg, test: LabelledImages, validation, trials: int = 400) -> dict[str, TestSet]:
    """The face test sets of the test people ``test``: verification pairs (threshold from the
    ``validation`` pairs), 5-way and N-way (N = all test people) one-shot identification (``trials``
    queries each), and retrieval; every one scored by ``FACE_BASELINES`` too, on the same pairs and trials."""
    seeds = rng.eval_seeds(cfg.eval.eval_seed)
    out = folder_tests(
        test,
        eval_seed=cfg.eval.eval_seed,
        n_way=min(5, test.n_classes),
        trials=trials,
        pairs=cfg.eval.verification_pairs,
        validation=validation,
        rule="accuracy",
    )
    n = test.n_classes
    if n > 5:
        episodes = tasks.episodes(
            test, n_way=n, n_query=1, n_episodes=math.ceil(trials / n), seed=[seeds["test_tasks"], n]
        )
        out[f"random_{n}way_1shot"] = TestSet("oneshot", {"tasks": episodes, "seed": seeds["test_candidates"]})
    return {k: dataclasses.replace(ts, baselines=FACE_BASELINES) for k, ts in out.items()}


# ---------------------------------------------------------------------------------------------
# Spoken digits: FSDD in speaker folds.

SPOKEN_BASELINES = ("mfcc_dtw", "mfcc_cosine", "pixels")
SPOKEN_LABELS = ("digit", "speaker")


@dataclasses.dataclass(frozen=True)
class SpokenDigits:
    """FSDD (``siamax.data.fsdd``) as log-mel images (``MelConfig.square`` of the model's input size) in
    speaker folds (``siamax.data.speaker_folds``): fold ``fold`` trains on its 4 training speakers and
    tests on its 2 unseen ones.

    ``label="digit"``: classes are the words, trained on ``train_digits`` only (None: all ten); tests:
    ``oneshot_10way`` (support clip of every digit from one test speaker, query from the other) and,
    where digits are held out of training, ``heldout_{N}way`` over those alone (the true one-shot case:
    words and speakers both new). ``label="speaker"``: classes are the speakers; test:
    ``verification``, same/different-speaker pairs of the 2 test speakers (ROC AUC, EER, accuracy at the
    validation threshold).

    Validation: ``val_takes`` of the 50 takes (the same take numbers for every training speaker and
    digit, drawn from ``cfg.data.split_seed``) are kept out of training; the checkpoint (cross-speaker
    one-shot word tasks on them, or 4-way speaker identification) and the threshold (pairs of them, EER
    rule) are chosen there. No test speaker's clip is read before the test sets are built. Every test set
    is also scored by ``SPOKEN_BASELINES`` on the same trials and pairs.

    ``validation="speakers"`` is for choosing settings (``experiments.validation_sweep --dataset
    spoken_digits``): the fold's last 2 training speakers become validation speakers, never trained on,
    and the validation tasks are the test's protocol on them (cross-speaker words, or speaker pairs);
    the model trains on the first 2 training speakers only. The held-out takes track seen speakers
    (99% while unseen speakers stay near 50%), so they cannot tell settings apart."""

    fold: int = 0
    label: str = "digit"
    train_digits: tuple[int, ...] | None = None
    val_takes: int = 10
    trials: int = 400
    validation: str = "takes"
    name = "spoken_digits"

    def __post_init__(self):
        from siamax.data import fsdd, speaker_folds  # pylint: disable=g-import-not-at-top

        n_folds = len(speaker_folds.speaker_folds(len(fsdd.SPEAKERS)))
        if not 0 <= self.fold < n_folds:
            raise InputError(f"fold must be in 0..{n_folds - 1}, got {self.fold}")
        if self.validation not in ("takes", "speakers"):
            raise InputError(f"validation must be 'takes' or 'speakers', got {self.validation!r}")
        if self.validation == "speakers" and self.label == "speaker":
            raise InputError("validation on held-out speakers is for word labels: 2 training speakers are 2 classes")
        if self.label not in SPOKEN_LABELS:
            raise InputError(f"label must be one of {SPOKEN_LABELS}, got {self.label!r}")
        digits = self.train_digits
        if digits is not None and (len(set(digits)) < 2 or not set(digits) <= set(range(fsdd.DIGITS))):
            raise InputError(f"train_digits must be >= 2 distinct digits in 0..9, got {digits}")

    @property
    def identity(self) -> dict:
        digits = None if self.train_digits is None else sorted(self.train_digits)
        out = {"fold": self.fold, "label": self.label, "train_digits": digits, "val_takes": self.val_takes}
        return out | ({"validation": self.validation} if self.validation != "takes" else {})

    def requires(self, test: bool) -> list[str]:
        return ["fsdd"]

    def prepare_run(self, cfg) -> Prepared:
        from siamax import audio  # pylint: disable=g-import-not-at-top
        from siamax.data import fsdd  # pylint: disable=g-import-not-at-top
        from siamax.data import speaker_folds as sf  # pylint: disable=g-import-not-at-top

        t0 = time.perf_counter()
        data = fsdd.load_fsdd()
        table = fsdd.fsdd_table(data, audio.MelConfig.square(cfg.spec.input_size), label=self.label)
        fold = sf.speaker_folds(len(fsdd.SPEAKERS))[self.fold]
        digits = tuple(range(fsdd.DIGITS)) if self.train_digits is None else tuple(sorted(self.train_digits))
        held = sf.held_out_takes(fsdd.REPETITIONS, self.val_takes, cfg.data.split_seed)
        trained, val_speakers = fold.train, fold.train
        if self.validation == "speakers":
            trained, val_speakers = fold.train[:2], fold.train[2:]
            held = np.arange(fsdd.REPETITIONS)  # every take of the validation speakers; none is trained on
        spoken = np.isin(data.digits, digits)
        val_rows = np.flatnonzero(spoken & np.isin(data.speakers, val_speakers) & np.isin(data.indices, held))
        train_rows = np.flatnonzero(
            spoken
            & np.isin(data.speakers, trained)
            & ~(np.isin(data.speakers, val_speakers) & np.isin(data.indices, held))
        )
        train, val = table.take(train_rows, name="fsdd/train"), table.take(val_rows, name="fsdd/validation")
        seeds = rng.eval_seeds(cfg.eval.eval_seed)
        images = np.asarray(table.images)
        if self.label == "digit":  # the test's protocol on the held-out takes of the training speakers
            val_tasks = sf.cross_speaker_tasks(
                images, data.digits, data.speakers, val_rows, speakers_of_task=val_speakers, classes=digits,
                n_tasks=math.ceil(cfg.eval.val_trials / len(digits)), seed=seeds["validation_tasks"],
            )  # fmt: skip
        else:
            val_tasks = tasks.episodes(
                val, n_way=val.n_classes, n_query=1, n_episodes=math.ceil(cfg.eval.val_trials / val.n_classes),
                seed=seeds["validation_tasks"],
            )  # fmt: skip
        v_images, v_pairs = _pairs_of(val, cfg.eval.verification_pairs, seeds["verification_validation"])
        names = [fsdd.SPEAKERS[s] for s in trained], [fsdd.SPEAKERS[s] for s in fold.test]
        where = (
            f"speakers {', '.join(fsdd.SPEAKERS[s] for s in val_speakers)} (never trained on)"
            if self.validation == "speakers"
            else f"takes {held.tolist()}"
        )
        summary = (
            f"data ready in {time.perf_counter() - t0:.1f}s: FSDD fold {self.fold}, {self.label} labels, train "
            f"speakers {', '.join(names[0])} (digits {''.join(map(str, digits))}), test speakers "
            f"{', '.join(names[1])}; {train.n_images} training clips, validation on {val.n_images} clips of "
            f"{where}: {len(val_tasks)} tasks ({sum(len(t.query) for t in val_tasks)} trials)"
        )

        def tests() -> dict[str, TestSet]:
            test_rows = np.flatnonzero(np.isin(data.speakers, fold.test))
            shuffle = seeds["test_candidates"]
            if self.label == "speaker":
                test = table.take(test_rows, name="fsdd/test speakers")
                pairs = samplers.make_pairs(test, cfg.eval.verification_pairs, seed=seeds["verification_test"])
                v = {"images": np.asarray(test.images), "pairs": pairs, "validation": (v_images, v_pairs)}
                return {"verification": TestSet("verification", {**v, "rule": "eer"}, SPOKEN_BASELINES)}
            out = {}
            held_out = tuple(d for d in range(fsdd.DIGITS) if d not in digits)
            for key, classes in (
                ("oneshot_10way", tuple(range(fsdd.DIGITS))),
                (f"heldout_{len(held_out)}way", held_out),
            ):
                if len(classes) < 2:
                    continue
                trial_tasks = sf.cross_speaker_tasks(
                    images, data.digits, data.speakers, test_rows, speakers_of_task=fold.test, classes=classes,
                    n_tasks=math.ceil(self.trials / len(classes)), seed=[seeds["test_tasks"], len(classes)],
                    name=key,
                )  # fmt: skip
                out[key] = TestSet(
                    "oneshot", {"tasks": trial_tasks, "seed": shuffle, "by": _alphabet}, SPOKEN_BASELINES
                )
            return out

        return Prepared(
            train=train,
            validation_tasks=val_tasks,
            threshold_images=v_images,
            threshold_pairs=v_pairs,
            threshold_rule="eer",
            tests=tests,
            ink="light",
            summary=summary,
            info={
                "name": f"fsdd/{self.label}",
                "classes": table.n_classes,
                "fold": self.fold,
                "train_speakers": names[0],
                "test_speakers": names[1],
                "train_digits": list(digits),
                "validation_takes": held.tolist(),
                "validation_speakers": [fsdd.SPEAKERS[s] for s in val_speakers],
                "images": table.n_images,
                "train_images": train.n_images,
                "validation_images": val.n_images,
                "mel": dataclasses.asdict(audio.MelConfig.square(cfg.spec.input_size)),
            },
        )


def archives(dataset, test: bool) -> Sequence[str]:
    """Resolve (and download, where it can) every archive a run of ``dataset`` will read, before it starts."""
    names = dataset.requires(test)
    if names:
        require(names)
    return names
