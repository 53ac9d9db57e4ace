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
* :class:`ImageFolder`: a user's folder of classes, split by class (``class_splits``, a manifest); for
  a small folder, validation on held-out images of the training classes.
* :func:`folder_tests`: the test sets of a table whose classes are all new to the model (``siamax
  evaluate`` and ``ImageFolder``'s test part).
* :class:`Faces`: ORL faces split by person (train / validation / test people, seeded): verification
  and N-way one-shot identification of unseen people, next to raw pixels and eigenfaces.

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
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from siamax import rng
from siamax.data import folder as fo
from siamax.data import lake, mnist, omniglot, orl, samplers, splits, tasks
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
    tests: Callable[[], dict[str, TestSet]]  # built after training only
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
    return np.asarray(table.images), samplers.make_pairs(table, n, seed=seed)


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


def omniglot_tests(cfg, table: LabelledImages, sp: splits.Splits, validation) -> dict[str, TestSet]:
    """Every trial and pair the main job scores, drawn from ``cfg.eval.eval_seed`` alone, so runs with
    different training seeds are scored on identical sets."""
    seeds = rng.eval_seeds(cfg.eval.eval_seed)
    shuffle = seeds["test_candidates"]
    test = sp.test
    test_table = table.take(test.flat_indices(), name="omniglot/test")
    all_drawers = table.of_classes(test.chars, name="omniglot/test, all 20 drawers")
    within = {
        n: tasks.within_alphabet_tasks(
            table, test.alphabets, test.drawers, per_alphabet=2, n_way=n, seed=seeds["test_tasks"]
        )
        for n in range(2, 21)
    }

    def oneshot(tasks_, baselines=("pixels",), **kw):
        return TestSet("oneshot", {"tasks": tasks_, "seed": shuffle, **kw}, baselines)

    out = {
        "lake20": oneshot(
            lake.lake_runs(), ("pixels", "pixels_cosine"), by={"alphabet": _alphabet, "task": _lake_task}
        ),
        "within_alphabet": oneshot(within[20], by={"alphabet": _alphabet, "task": _name}),
        # Vinyals-style: classes drawn across the 10 test alphabets, from all 20 drawers of their characters
        # (the test alphabets never enter training, so their other drawers are test data too); 400 trials each.
        **{
            f"random_{n}way_{k}shot": oneshot(
                tasks.episodes(
                    all_drawers, n_way=n, k_shot=k, n_query=1, n_episodes=400 // n, seed=[seeds["random_tasks"], n, k]
                )
            )
            for n, k in ((20, 1), (5, 1), (20, 5))
        },
        # The threshold is chosen on validation pairs (model selection), accuracy measured on test pairs.
        "verification": TestSet(
            "verification",
            {
                "images": np.asarray(test_table.images),
                "pairs": samplers.make_pairs(test_table, cfg.eval.verification_pairs, seed=seeds["verification_test"]),
                "validation": validation,
                "rule": "accuracy",
            },
        ),
        "retrieval": TestSet("retrieval", {"images": np.asarray(test_table.images), "labels": test_table.labels}),
        **{f"nway_within_alphabet/{n}": oneshot(t, baselines=()) for n, t in within.items()},
    }
    return out


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
            tests=lambda: {**omniglot_sets(), **mnist_tests(cfg.spec, cfg.eval.eval_seed, self.trials)},
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
    images = np.asarray(table.images)
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
        "retrieval": TestSet("retrieval", {"images": images, "labels": table.labels}),
    }


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A folder ``DIR/<class>/<image>`` (or ``DIR/<group>/<class>/<image>``) split by class into train,
    validation and test (``fractions``, seeded, a manifest in the work directory).

    Small folders (``siamax.data.class_splits.small_folder_sizes``): a validation part of fewer than 2 classes is
    merged into training and the checkpoint and threshold are chosen on held-out images of the training
    classes instead (``siamax.data.class_splits.hold_out``: 2 images of every class that has 4 or more); where no
    class has 4, on the training images themselves (said so: an optimistic choice). A test part of fewer
    than 2 classes is left empty (evaluate elsewhere with ``siamax evaluate``).
    """

    path: str | Path
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    ink: str = "auto"
    layout: str = "auto"
    progress: bool = True
    name = "folder"

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    @property
    def identity(self) -> dict:
        return {"data": str(self.root), "fractions": list(self.fractions)}

    def requires(self, test: bool) -> list[str]:
        return []

    def prepare_run(self, cfg) -> Prepared:
        table, report = fo.image_folder(
            self.root, size=cfg.spec, layout=self.layout, ink=self.ink, progress=self.progress
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
            ink=report.ink,
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


def archives(dataset, test: bool) -> Sequence[str]:
    """Resolve (and download, where it can) every archive a run of ``dataset`` will read, before it starts."""
    names = dataset.requires(test)
    if names:
        require(names)
    return names
