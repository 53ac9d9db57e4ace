"""Convolutions of equal maths behind one registry, and the per-layer plan that picks among them.

Every implementation computes the same stride-1 NHWC cross-correlation as
``lax.conv_general_dilated`` (to float rounding) and is differentiable with ``jax.grad``; each
module's docstring says how and where it is fast:

* ``"xla"``: ``lax.conv_general_dilated`` (cuDNN & co. on GPU/TPU; slow weight gradients on CPU);
* ``"matmul"``, ``"hybrid"`` (:mod:`siamax.conv.matmul`): patches + matmul; XLA's forward with a
  patches^T @ grad weight gradient;
* ``"fft"`` (:mod:`siamax.conv.fft`): the convolution theorem;
* ``"winograd"`` (:mod:`siamax.conv.winograd`, 3x3 kernels): F(m x m, 3x3), m per layer;
* ``"direct"`` (:mod:`siamax.conv.direct`, single-channel inputs): shifted multiply-adds, and the
  whole pooled block as one op;
* ``"s2d"`` (:mod:`siamax.conv.s2d`, pooled blocks): space-to-depth onto the pooled grid;
* ``"auto"``: per layer and backend, the rule in :func:`siamax.conv.registry._auto`.

:data:`REGISTRY` says what each supports. ``plan(spec, backend)`` resolves a ModelSpec's
``conv_impl`` once per conv layer into :class:`LayerPlan` s, which the model's tower applies
exactly (:func:`apply`); ``plan_dict(spec, backend)`` is the same as JSON for results. Everything
is shape-static and backend-neutral (no host callbacks); the dtype of the inputs (float32 or
bfloat16) is the compute dtype, except that FFT and Winograd compute in float32 and cast back.
"""

from siamax.conv.pooling import max_pool_2x2
from siamax.conv.registry import (
    IMPLS,
    POOLS,
    REGISTRY,
    Impl,
    LayerPlan,
    apply,
    conv2d,
    conv_flops,
    conv_relu_pool,
    plan,
    plan_dict,
    plan_layer,
)

__all__ = [
    "IMPLS",
    "POOLS",
    "REGISTRY",
    "Impl",
    "LayerPlan",
    "apply",
    "conv2d",
    "conv_flops",
    "conv_relu_pool",
    "max_pool_2x2",
    "plan",
    "plan_dict",
    "plan_layer",
]
