"""One config object, named presets, and command-line overrides generated from its fields.

Every field has a help text (``--help`` shows them all); ``Config.from_preset(name, **overrides)``
and ``parse_args`` validate names and values and list the valid ones on error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from siamax.model import MODELS


def _f(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    # Model.
    model: str = _f("paper", f"network preset from siamax.model.MODELS: {sorted(MODELS)}")
    dtype: str = _f("float32", "compute dtype (float32|bfloat16); parameters and optimiser state stay float32")
    # Data.
    split_seed: int = _f(0, "seed of the drawer split (train 12 / validation 4 / test 4 drawers)")
    train_drawers: int = _f(
        12,
        "drawers per training character: 12 = the paper's split; up to 20 also uses "
        "the drawers that the (disjoint) validation and test alphabets use, as Lake's "
        "protocol trains on all 20 drawers of the background alphabets",
    )
    objective: str = _f(
        "pairs",
        "pairs: independent same/different pairs (the paper); all_pairs: every pair "
        "within a batch of labelled images; episodic: pick-the-same-class softmax over "
        "in-batch candidates plus all-pairs cross-entropy",
    )
    n_pairs: int = _f(
        150_000,
        "pairs objective: size of the fixed pair set (paper: 30k/90k/150k); "
        "0 = sample fresh pairs on the fly every step",
    )
    distortions: int = _f(
        8,
        "pairs objective: affine-distorted copies per pair (paper: 8 -> 9x data); "
        "with n_pairs=0, >0 distorts every image on the fly",
    )
    different: str = _f("any", "where different pairs come from: any (paper) | same_alphabet (hard negatives)")
    episode_chars: int = _f(20, "episodic/all_pairs: characters per batch")
    episode_drawers: int = _f(4, "episodic/all_pairs: drawings per character per batch")
    episode_alphabets: int = _f(
        1,
        "episodic/all_pairs: alphabets a batch's characters come from "
        "(1 = within-alphabet batches, like the test's trials)",
    )
    augment: bool = _f(False, "episodic/all_pairs: distort every image on the fly with the paper's affine ranges")
    rotations: bool = _f(
        False,
        "episodic/all_pairs: turn each character of a batch by a random multiple of 90 "
        "degrees and treat every (character, turn) as its own class (4x the classes)",
    )
    batch_size: int = _f(128, "pairs objective: pairs per step (global, over all devices)")
    # Optimiser.
    optimizer: str = _f("sgd", "sgd: the paper's per-layer SGD with momentum | adam")
    learning_rate: float = _f(0.01, "adam: learning rate; sgd: default per-layer learning rate eta_j")
    layer_learning_rates: str = _f("", "sgd: per-layer eta_j, e.g. 'conv1=0.05,fc=0.01' (others: --learning-rate)")
    momentum: float = _f(0.9, "sgd: default final momentum mu_j")
    layer_momenta: str = _f("", "sgd: per-layer final momentum, e.g. 'conv1=0.9,head=0.5'")
    momentum_ramp_epochs: int = _f(20, "sgd: epochs over which momentum rises linearly from 0.5 to mu_j (OPEN)")
    lr_decay: float = _f(0.99, "learning rates are multiplied by this every epoch (paper: 0.99)")
    l2: float = _f(0.0, "default per-layer L2 weight lambda_j (paper searched [0, 0.1]; values OPEN)")
    layer_l2: str = _f("", "per-layer lambda_j, e.g. 'conv1=0.001,fc=0.0001'")
    # Schedule.
    epochs: int = _f(200, "maximum number of epochs")
    steps_per_epoch: int = _f(0, "steps per epoch; 0 = one pass over the (distorted) pair set")
    patience: int = _f(20, "early stopping: epochs without validation improvement before stopping (0 = never)")
    val_trials: int = _f(320, "validation one-shot trials (20-way, within-alphabet, validation alphabets only)")
    verification_pairs: int = _f(10_000, "pairs for verification accuracy (validation threshold, test accuracy)")
    seed: int = _f(0, "seed of initialisation, data order and distortions")
    devices: int = _f(0, "devices to shard the batch over (0 = all)")

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid: {sorted(MODELS)}")
        choices = {
            "dtype": ("float32", "bfloat16"),
            "objective": ("pairs", "all_pairs", "episodic"),
            "different": ("any", "same_alphabet"),
            "optimizer": ("sgd", "adam"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if not 1 <= self.train_drawers <= 20:
            raise ValueError(f"train_drawers must be in 1..20, got {self.train_drawers}")
        if self.rotations and self.objective == "pairs":
            raise ValueError("rotations apply to the episodic and all_pairs objectives")
        for name in ("epochs", "batch_size", "episode_chars", "episode_drawers", "episode_alphabets", "val_trials"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_pairs", "distortions", "steps_per_epoch", "patience", "devices"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.objective == "pairs" and self.n_pairs == 0 and self.steps_per_epoch == 0:
            raise ValueError("on-the-fly pairs (n_pairs=0) need steps_per_epoch > 0")
        layers = self.spec.layer_names
        for name in ("layer_learning_rates", "layer_momenta", "layer_l2"):
            unknown = [layer for layer, _ in layer_values(getattr(self, name), name) if layer not in layers]
            if unknown:
                raise ValueError(f"{name} names unknown layers {unknown}; model {self.model!r} has {list(layers)}")

    @property
    def spec(self):
        return MODELS[self.model].replace(dtype=self.dtype)

    def per_layer(self, name: str) -> tuple[tuple[str, float], ...]:
        return layer_values(getattr(self, name), name)

    def l2_lambdas(self) -> tuple[tuple[str, float], ...]:
        explicit = dict(self.per_layer("layer_l2"))
        return tuple((layer, explicit.get(layer, self.l2)) for layer in self.spec.layer_names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Config:
        _check_fields(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> Config:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid presets: {sorted(PRESETS)}")
        _check_fields(overrides)
        return cls(**{**PRESETS[preset], **overrides})


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
            raise ValueError(f"{name}: expected 'layer=number,...', got {item!r}")
    return tuple(out)


def _check_fields(changes: dict) -> None:
    valid = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(changes) - valid)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(valid)}")


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's full setup (section 4): 105x105 network, per-layer SGD with momentum ramp and 1%
    # decay, 150k pairs x 9 (8 affine copies), <= 200 epochs, early stopping with patience 20 on
    # 320 validation one-shot trials. Per-layer eta/mu/lambda were tuned by Bayesian optimisation
    # and never published (OPEN): these are siamax's defaults.
    "paper": dict(
        model="paper",
        objective="pairs",
        n_pairs=150_000,
        distortions=8,
        batch_size=128,
        optimizer="sgd",
        learning_rate=0.01,
        momentum=0.9,
        momentum_ramp_epochs=20,
        l2=0.0,
        layer_l2="conv1=0.0002,conv2=0.0002,conv3=0.0002,conv4=0.0002,fc=0.0001",
        epochs=200,
        patience=20,
    ),
    # CPU-sized (2 cores, <= 15 minutes in all): a 35x35 four-block tower trained episodically on
    # within-alphabet batches (40 characters x 2 drawings) from all 20 drawers of the background
    # alphabets, each character turned by a random quarter turn as its own class. Every setting was
    # chosen on the validation alphabets
    # (results/validation_sweeps/, README "How the quick preset was chosen"); patience 0 because the
    # 14-epoch budget is fixed anyway and the best epoch is still kept by validation.
    "quick": dict(
        model="small",
        train_drawers=20,
        objective="episodic",
        episode_chars=40,
        episode_drawers=2,
        episode_alphabets=1,
        rotations=True,
        optimizer="adam",
        learning_rate=3e-3,
        lr_decay=0.97,
        epochs=14,
        steps_per_epoch=250,
        patience=0,
        batch_size=80,
    ),
    # MNIST transfer (paper section 5): the reduced 35x35 network, trained on Omniglot downsampled 3x.
    # All 20 drawers as in quick (validation 61.6% vs 60.0% with 12); quick's Adam 3e-3 made this
    # network's validation collapse (18% -> 6% in two epochs), so it keeps 1e-3 x0.92.
    "mnist_quick": dict(
        model="reduced35",
        train_drawers=20,
        objective="episodic",
        episode_chars=20,
        episode_drawers=4,
        episode_alphabets=1,
        optimizer="adam",
        learning_rate=1e-3,
        lr_decay=0.92,
        epochs=6,
        steps_per_epoch=250,
        patience=6,
        batch_size=80,
    ),
    "mnist_paper": dict(
        model="reduced35",
        objective="pairs",
        n_pairs=150_000,
        distortions=8,
        batch_size=128,
        optimizer="sgd",
        learning_rate=0.01,
        epochs=200,
        patience=20,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` flag per Config field (default: the preset's value)."""
    group = parser.add_argument_group("config overrides (default: the preset's value)")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = {"bool": _bool, "int": int, "float": float}.get(
            f.type if isinstance(f.type, str) else f.type.__name__, str
        )
        group.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} [default {f.default!r}]",
        )


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def from_args(args: argparse.Namespace, preset: str) -> Config:
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name, None) is not None
    }
    return Config.from_preset(preset, **overrides)


def diff(a: dict, b: dict) -> dict:
    """{field: (a, b)} for fields that differ (for refusing to mix runs of different configs)."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def dumps(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=1, sort_keys=True)


def preset_names() -> Sequence[str]:
    return sorted(PRESETS)
