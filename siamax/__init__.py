"""siamax: Siamese neural networks for one-shot image recognition in JAX (Koch et al. 2015)."""
from siamax.api import (Params, embed, init, logits_from_embeddings, pair_logits, preprocess, score,
                        score_embeddings)
from siamax import losses
from siamax.checkpoint import load
from siamax.model import MODELS, ModelSpec, param_count

__version__ = "0.1.0"

__all__ = ["MODELS", "ModelSpec", "Params", "embed", "init", "load", "logits_from_embeddings", "pair_logits",
           "param_count", "preprocess", "score", "score_embeddings"]
