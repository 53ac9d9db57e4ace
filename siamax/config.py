"""The run's config: its sections and the rules that span them.

A :class:`Config` holds the run-level settings (``seed``, ``devices``) and one frozen section per
concern, each validated where it is defined:

* ``model``: the network and compute dtype;
* ``data``: the split and how training batches are drawn (pair sets, or P classes x K images);
* ``objective``: what the train step optimises;
* ``optim``: the optimiser and its per-layer settings;
* ``schedule``: epochs, steps, early stopping;
* ``eval``: validation and verification trials, and their own seed.

Rules that span sections (a setting that only some objectives or optimisers read) live in
:data:`APPLIES_WHEN` and are checked in one place, :meth:`Config.__post_init__`: a config can never
carry a setting that nothing reads, nor a combination known to train nothing.

Every field has a flat name, that of its command-line flag (``siamax.flags``): ``learning_rate`` is
``optim.learning_rate``. ``Config.override(**flat)`` is the one way to change fields by those names.
The named configs are in ``siamax.presets``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from siamax import augment as _augment
from siamax import energies, losses, miners
from siamax.errors import ConfigError
from siamax.model import MODELS

OBJECTIVES = tuple(losses.OBJECTIVES)
PAIR_OBJECTIVES = tuple(k for k, batch in losses.OBJECTIVES.items() if batch == "pairs")
CLASS_OBJECTIVES = tuple(k for k, batch in losses.OBJECTIVES.items() if batch == "classes")


def _f(default, help: str, choices: Sequence | None = None, flag: str | None = None):
    meta = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


def _check_choices(section) -> None:
    for f in dataclasses.fields(section):
        valid = f.metadata.get("choices")
        if valid and getattr(section, f.name) not in valid:
            raise ConfigError(f"{_flag_name(f)} must be one of {list(valid)}, got {getattr(section, f.name)!r}")


def _check_at_least(section, minimum: int, names: Sequence[str]) -> None:
    for name in names:
        if getattr(section, name) < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {getattr(section, name)}")


def default_margin(energy: str) -> float:
    """The contrastive/triplet margin of an energy when none is given (``margin`` 0)."""
    return energies.get(energy).default_margin


def layer_values(text: str, name: str = "value") -> tuple[tuple[str, float], ...]:
    """'conv1=0.01,fc=0.1' -> (('conv1', 0.01), ('fc', 0.1))."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        layer, sep, value = item.partition("=")
        try:
            out.append((layer.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"{name}: expected 'layer=number,...', got {item!r}")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model: str = _f("paper", "network preset from siamax.model.MODELS", choices=sorted(MODELS))
    energy: str = _f(
        "weighted_l1",
        "how two embeddings are compared: weighted_l1 (Koch et al.: sigmoid of a weighted L1 distance), "
        "euclidean or cosine (a sigmoid of the distance, with a learned scale and bias)",
        choices=energies.ENERGIES,
    )
    dtype: str = _f(
        "float32",
        "compute dtype; parameters and optimiser state stay float32",
        choices=("float32", "bfloat16"),
    )

    ink_frame: float = _f(
        0.0,
        "0 = each image resized whole to the input size (the paper); f in (0, 1] = its ink centred and its bounding "
        "box scaled to f of the frame, in training, evaluation and transfer alike (siamax.preprocess)",
    )
    channels: int = _f(
        1,
        "input channels of the network: 1 = gray (colour images converted by BT.601 luma), 3 = RGB (colour kept)",
        choices=(1, 3),
    )
    image_size: int = _f(
        0,
        "side of the square input images, in pixels (0 = the model preset's own: 105 for paper, 35 for small and "
        "reduced35); the tower's layers adapt, the embedding grows with it",
    )

    def __post_init__(self):
        _check_choices(self)
        if self.image_size < 0:
            raise ConfigError(f"image_size must be >= 0 (0: the model's own), got {self.image_size}")
        try:
            _ = self.spec
        except ValueError as e:  # e.g. an input too small for the model's kernels and pools
            raise ConfigError(f"model {self.model!r} at image_size {self.image_size}: {e}") from None

    @property
    def spec(self):
        base = MODELS[self.model]
        return base.replace(
            dtype=self.dtype,
            energy=self.energy,
            ink_frame=self.ink_frame,
            input_size=self.image_size or base.input_size,
            channels=self.channels,
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    split_seed: int = _f(0, "seed of the drawer split (train 12 / validation 4 / test 4 drawers)")
    train_drawers: int = _f(
        12,
        "drawers per training character: 12 = the paper's split; up to 20 also uses the drawers that the "
        "(disjoint) validation and test alphabets use, as Lake's protocol trains on all 20 drawers of the "
        "background alphabets",
    )
    # Pair batches (the pairs objective).
    n_pairs: int = _f(
        150_000,
        "size of the fixed pair set (paper: 30k/90k/150k); 0 = sample fresh pairs on the fly every step",
    )
    distortions: int = _f(
        8,
        "affine-distorted copies per pair (paper: 8 -> 9x data); with n_pairs=0, >0 distorts every image on the fly",
    )
    different: str = _f(
        "any",
        "where different pairs come from: any (paper) | same_alphabet (hard negatives)",
        choices=("any", "same_alphabet"),
    )
    batch_size: int = _f(128, "pairs per step (global, over all devices and processes)")
    # Class batches (P characters x K drawings).
    episode_chars: int = _f(20, "characters per batch (P)")
    episode_drawers: int = _f(4, "drawings per character per batch (K)")
    episode_alphabets: int = _f(
        1, "alphabets a batch's characters come from (1 = within-alphabet batches, like the test's trials)"
    )
    augment: bool = _f(False, "distort every image on the fly with the paper's affine ranges")
    augment_ops: str = _f(
        "",
        "augmentations of every training image inside the step, on the device (siamax.augment): '' = none, "
        f"a set ({', '.join(k + ': ' + ('+'.join(v) or 'nothing') for k, v in _augment.SETS.items())}) or "
        f"comma-separated names of {', '.join(_augment.OPS)}",
    )
    thicken: float = _f(
        0.0,
        "probability that a training image's strokes are thickened by one pixel (a 3x3 max filter), so that the "
        "network sees thin and thick strokes alike",
    )
    rotations: bool = _f(
        False,
        "turn each character of a batch by a random multiple of 90 degrees and treat every (character, turn) "
        "as its own class (4x the classes)",
    )

    def __post_init__(self):
        _check_choices(self)
        if not 1 <= self.train_drawers <= 20:
            raise ConfigError(f"train_drawers must be in 1..20, got {self.train_drawers}")
        _check_at_least(self, 1, ("batch_size", "episode_chars", "episode_drawers", "episode_alphabets"))
        _check_at_least(self, 0, ("n_pairs", "distortions"))
        if not 0.0 <= self.thicken <= 1.0:
            raise ConfigError(f"thicken is a probability, got {self.thicken}")
        try:
            _augment.op_names(self.augment_ops)
        except ValueError as e:
            raise ConfigError(f"augment_ops: {e}") from None


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = _f(
        "pairs",
        "pairs: independent same/different pairs (the paper); all_pairs: every pair within a batch of "
        "P classes x K images; episodic: pick-the-same-class softmax over in-batch candidates plus the "
        "all-pairs cross-entropy; contrastive: margin loss on the distance of every in-batch pair (Hadsell "
        "et al. 2006); triplet: anchor/positive/negative margin loss over mined in-batch triplets",
        choices=OBJECTIVES,
        flag="objective",
    )

    margin: float = _f(
        0.0,
        "contrastive/triplet: the margin on the energy's distance (weighted_l1: the mean |e1 - e2|; euclidean: "
        "||e1 - e2||; cosine: 1 - cos, in [0, 2]); 0 = the energy's default "
        f"({', '.join(f'{name} {default_margin(name)}' for name in energies.ENERGIES)}); changing --energy without "
        "--margin goes back to the new energy's default",
    )
    miner: str = _f(
        "batch_hard",
        "triplet: which in-batch triplets count: all (every valid one; the loss averages those with a positive "
        "loss), batch_hard (the hardest positive and negative of each anchor), semi_hard (FaceNet: per anchor and "
        "positive, the closest negative farther than the positive; if none, the farthest negative)",
        choices=miners.MINERS,
    )

    def __post_init__(self):
        _check_choices(self)
        if self.margin < 0:
            raise ConfigError(f"margin must be >= 0 (0: the energy's default), got {self.margin}")

    @property
    def batch(self) -> str:
        """The batch form this objective trains on: "pairs" or "classes" (P x K labelled images)."""
        return losses.OBJECTIVES[self.kind]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = _f("sgd", "sgd: the paper's per-layer SGD with momentum | adam", choices=("sgd", "adam"))
    learning_rate: float = _f(0.01, "adam: learning rate; sgd: default per-layer learning rate eta_j")
    layer_learning_rates: str = _f("", "per-layer eta_j, e.g. 'conv1=0.05,fc=0.01' (others: --learning-rate)")
    momentum: float = _f(0.9, "default final momentum mu_j")
    layer_momenta: str = _f("", "per-layer final momentum, e.g. 'conv1=0.9,head=0.5'")
    momentum_ramp_epochs: int = _f(20, "epochs over which momentum rises linearly from 0.5 to mu_j (OPEN)")
    lr_decay: float = _f(0.99, "learning rates are multiplied by this every epoch (paper: 0.99)")
    l2: float = _f(0.0, "default per-layer L2 weight lambda_j (paper searched [0, 0.1]; values OPEN)")
    layer_l2: str = _f("", "per-layer lambda_j, e.g. 'conv1=0.001,fc=0.0001'")

    def __post_init__(self):
        _check_choices(self)
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2}")
        for name in ("layer_learning_rates", "layer_momenta", "layer_l2"):
            layer_values(getattr(self, name), name)  # syntax; layer names are checked against the model

    def per_layer(self, name: str) -> tuple[tuple[str, float], ...]:
        return layer_values(getattr(self, name), name)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = _f(200, "maximum number of epochs")
    steps_per_epoch: int = _f(0, "steps per epoch; 0 = one pass over the (distorted) pair set")
    patience: int = _f(20, "early stopping: epochs without validation improvement before stopping (0 = never)")

    def __post_init__(self):
        _check_at_least(self, 1, ("epochs",))
        _check_at_least(self, 0, ("steps_per_epoch", "patience"))


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    val_trials: int = _f(320, "validation one-shot trials (20-way, within-alphabet, validation alphabets only)")
    verification_pairs: int = _f(10_000, "pairs for verification accuracy (validation threshold, test accuracy)")
    eval_seed: int = _f(
        0,
        "seed of every evaluation draw (validation and test trials, verification pairs, candidate order); "
        "fixed by default, so runs with different --seed are scored on identical trials",
    )

    test_sets: str = _f(
        "",
        "comma-separated test sets to score, e.g. 'lake20,verification' (default: all the dataset has; the "
        "names are results.json's test_sets). Training and validation do not read it: a finished run can be "
        "rerun with other test sets",
    )

    def __post_init__(self):
        _check_at_least(self, 1, ("val_trials", "verification_pairs"))
        names = self.test_names
        if len(set(names)) != len(names) or self.test_sets.strip() and not names:
            raise ConfigError(f"--test-sets must name test sets once each, comma-separated; got {self.test_sets!r}")

    @property
    def test_names(self) -> tuple[str, ...]:
        """The test sets asked for (empty: all of them)."""
        return tuple(n.strip() for n in self.test_sets.split(",") if n.strip())


# Flags that change what is scored after training, never the run itself: a work directory's run resumes
# (and is scored again) with other values of them.
EVALUATION_ONLY = ("test_sets",)

SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "eval": EvalConfig,
}

# Settings that only some configs read: {flag name: (selector flag, values of the selector that read it)}.
APPLIES_WHEN: dict[str, tuple[str, tuple]] = {
    **{name: ("objective", PAIR_OBJECTIVES) for name in ("n_pairs", "distortions", "different", "batch_size")},
    **{
        name: ("objective", CLASS_OBJECTIVES)
        for name in ("episode_chars", "episode_drawers", "episode_alphabets", "augment", "rotations", "thicken")
    },
    "margin": ("objective", ("contrastive", "triplet")),
    "miner": ("objective", ("triplet",)),
    **{
        name: ("optimizer", ("sgd",))
        for name in ("layer_learning_rates", "momentum", "layer_momenta", "momentum_ramp_epochs")
    },
}
# {energy: triplet miners that collapse on it}: refused (Config._check_miner).
COLLAPSING_MINERS: dict[str, tuple[str, ...]] = {"weighted_l1": ("batch_hard",), "euclidean": ("batch_hard",)}
_HINTS = {
    "augment": "the pairs objective distorts its pairs with --distortions (fixed copies, or on the fly with "
    "--n-pairs 0)",
    "batch_size": "a batch of the in-batch objectives is --episode-chars x --episode-drawers images",
}


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = _f(0, "seed of the training streams: initialisation, data order, distortions, step keys")
    devices: int = _f(0, "devices to shard the batch over (0 = all)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()

    def __post_init__(self):
        _check_at_least(self, 0, ("devices",))
        flat = self.flat()
        for name, value in flat.items():
            if not applies(name, flat) and value != _DEFAULTS[name]:
                raise ConfigError(_not_applicable(name, flat))
        if self.objective.kind in PAIR_OBJECTIVES and self.data.n_pairs == 0 and self.schedule.steps_per_epoch == 0:
            raise ConfigError("on-the-fly pairs (n_pairs=0) need steps_per_epoch > 0")
        if self.objective.kind in CLASS_OBJECTIVES and self.schedule.steps_per_epoch == 0:
            raise ConfigError(f"objective {self.objective.kind!r} samples on the fly: set steps_per_epoch > 0")
        self._check_margin()
        self._check_miner()
        if self.objective.batch == "classes" and self.data.episode_drawers < 2:
            raise ConfigError("episode_drawers must be >= 2: a batch needs two images of a class for a positive pair")
        if self.model.energy != "weighted_l1" and dict(self.optim.per_layer("layer_l2")).get("head"):
            raise ConfigError(
                f"layer_l2 names the head, but the {self.model.energy} head has no weight matrix (only a scale and "
                "a bias): the setting would be ignored"
            )
        spectrogram_ops = set(_augment.op_names(self.data.augment_ops)) & set(_augment.SETS["audio"])
        if spectrogram_ops and self.spec.channels != 1:
            raise ConfigError(
                f"augment_ops {sorted(spectrogram_ops)} act on 1-channel log-mel images; this model has "
                f"{self.spec.channels} channels"
            )
        layers = self.spec.layer_names
        for name in ("layer_learning_rates", "layer_momenta", "layer_l2"):
            unknown = [layer for layer, _ in self.optim.per_layer(name) if layer not in layers]
            if unknown:
                raise ConfigError(
                    f"{name} names unknown layers {unknown}; model {self.model.model!r} has {list(layers)}"
                )

    @property
    def spec(self):
        return self.model.spec

    @property
    def margin(self) -> float:
        """The metric objectives' margin: the one given, else the energy's default."""
        return self.objective.margin or default_margin(self.model.energy)

    def _check_margin(self) -> None:
        if self.objective.kind not in ("contrastive", "triplet"):
            return
        # A hinge that the distance can never satisfy trains nothing useful: refuse it.
        spec, m = self.spec, self.margin
        bounded = spec.fc_units and spec.fc_activation == "sigmoid"  # features in (0, 1): mean |diff| < 1
        limit = {"cosine": 2.0, "weighted_l1": 1.0 if bounded else None}.get(spec.energy)
        if limit is not None and m >= limit:
            raise ConfigError(
                f"margin {m} is out of reach: the {spec.energy} distance of model {self.model.model!r} is below "
                f"{limit}; use --margin below {limit}"
            )

    def _check_miner(self) -> None:
        # Measured: on the quick preset, triplet with batch_hard stayed at chance (5% on 20-way validation
        # trials) on weighted_l1 and euclidean, 79% on cosine (results/objective_energy/sweep.json).
        if self.objective.kind == "triplet" and self.objective.miner in COLLAPSING_MINERS.get(self.model.energy, ()):
            raise ConfigError(
                f"triplet with the {self.objective.miner} miner collapses on the {self.model.energy} energy (it "
                "trained nothing: chance-level validation); use --energy cosine, or --miner all (or semi_hard)"
            )

    def flat(self) -> dict[str, Any]:
        """``{flag name: value}`` over every field (the namespace of the command-line flags)."""
        out = {name: getattr(self, name) for name in _RUN_FIELDS}
        for section in SECTIONS:
            part = getattr(self, section)
            out.update({_flag_name(f): getattr(part, f.name) for f in dataclasses.fields(part)})
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def override(self, **flat: Any) -> Config:
        """A copy with fields changed by flag name (``learning_rate=...``).

        Settings this config inherited but that the new one does not read (say, a preset's
        ``episode_chars`` after ``objective="pairs"``) go back to the base value; an explicitly given
        setting that the new config would not read is refused. A new ``energy`` without a ``margin``
        takes that energy's default margin (a margin is a distance of one energy, meaningless for another).
        """
        unknown = sorted(set(flat) - set(_OWNER))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {sorted(_OWNER)}")
        merged = {**self.flat(), **flat}
        if flat.get("energy", self.model.energy) != self.model.energy and "margin" not in flat:
            merged["margin"] = _DEFAULTS["margin"]  # a margin is tuned for its energy: the new one's default
        for name in list(merged):
            if not applies(name, merged):
                if name in flat and flat[name] != _DEFAULTS[name]:
                    raise ConfigError(_not_applicable(name, merged))
                merged[name] = _DEFAULTS[name]
        return Config.from_flat(merged)

    replace = override

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> Config:
        """A config from ``{flag name: value}`` (every field not given takes the base value)."""
        unknown = sorted(set(flat) - set(_OWNER))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {sorted(_OWNER)}")
        parts: dict[str, dict] = {section: {} for section in SECTIONS}
        run = {}
        for name, value in flat.items():
            section, field = _OWNER[name]
            (run if section is None else parts[section])[field] = value
        return cls(**run, **{s: SECTIONS[s](**kw) for s, kw in parts.items()})


def _flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name


_RUN_FIELDS = ("seed", "devices")
# {flag name: (section or None for the run-level fields, field name)}; FIELDS: {flag name: its dataclass
# field}, in order (the command line's flags, siamax.flags).
_OWNER: dict[str, tuple[str | None, str]] = {name: (None, name) for name in _RUN_FIELDS}
FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config) if f.name in _RUN_FIELDS}
for _section, _cls in SECTIONS.items():
    for _field in dataclasses.fields(_cls):
        _OWNER[_flag_name(_field)] = (_section, _field.name)
        FIELDS[_flag_name(_field)] = _field
_DEFAULTS = {name: f.default for name, f in FIELDS.items()}
assert set(APPLIES_WHEN) <= set(_OWNER)


def applies(name: str, flat: dict[str, Any]) -> bool:
    """Whether a config with these flat values reads the setting ``name``."""
    selector, values = APPLIES_WHEN.get(name, (None, ()))
    return selector is None or flat[selector] in values


def _not_applicable(name: str, flat: dict[str, Any]) -> str:
    selector, values = APPLIES_WHEN[name]
    hint = f"; {_HINTS[name]}" if name in _HINTS else ""
    return (
        f"{name} applies only to {selector} {' / '.join(values)}, and this config has {selector} "
        f"{flat[selector]!r}: it would be ignored{hint}"
    )


def dumps(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=1, sort_keys=True)
