"""siamax: Siamese neural networks for one-shot image recognition in JAX (Koch et al. 2015)."""

import importlib

from siamax import losses
from siamax.api import (
    Ensemble,
    Params,
    embed,
    ensemble,
    init,
    input_shape,
    logits_from_embeddings,
    pair_logits,
    preprocess,
    score,
    score_embeddings,
)
from siamax.checkpoint import load
from siamax.model import MODELS, ModelSpec, param_count

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "Ensemble",
    "Index",
    "ModelSpec",
    "Params",
    "embed",
    "ensemble",
    "init",
    "input_shape",
    "load",
    "logits_from_embeddings",
    "losses",
    "pair_logits",
    "param_count",
    "preprocess",
    "score",
    "score_embeddings",
]

# Submodules with heavier imports (TFDS for data) load on first use: `siamax.data.load_omniglot()`.
_LAZY = (
    "augment",
    "commands",
    "config",
    "data",
    "energies",
    "evaluators",
    "experiment",
    "metrics",
    "miners",
    "optim",
    "report",
    "rng",
    "sharding",
    "train",
)


def __getattr__(name):
    if name == "Index":  # the gallery index: siamax.Index
        from siamax.index import Index

        return Index
    if name in _LAZY:
        return importlib.import_module(f"siamax.{name}")
    raise AttributeError(f"module 'siamax' has no attribute {name!r}")
