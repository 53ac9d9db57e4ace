"""2x2/2 max-pooling: plain (``"max"``), with a mask-saving VJP (``"masked"``), and the helpers fused blocks share."""

import jax
import jax.numpy as jnp


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2/2 max-pooling (floor: an odd trailing row/column is dropped), as reshape + max."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_vjp
def masked_max_pool_2x2(x):
    """:func:`max_pool_2x2` whose VJP routes the gradient through a one-byte mask of the window's maxima
    (shared on ties, as autodiff does) saved by the forward pass, instead of comparing the input with
    the broadcast maxima again (measured on CPU: a few ms less per small-model training step)."""
    return max_pool_2x2(x)


def _pool_phases(x):
    hp, wp = x.shape[1] // 2, x.shape[2] // 2
    return [x[:, r : 2 * hp : 2, s : 2 * wp : 2] for r in range(2) for s in range(2)]


def _masked_fwd(x):
    y, hits = max_and_hits(_pool_phases(x))
    return y, (hits, jnp.zeros((0,) + x.shape[1:], x.dtype))


def _masked_bwd(res, g):
    hits, like = res
    return (unpool(route(hits, g), like.shape[1], like.shape[2]),)


masked_max_pool_2x2.defvjp(_masked_fwd, _masked_bwd)


def max_and_hits(z):
    """Max over the 4 pooling phases and a bitmask (uint8) of the phases that reach it (ties: several).

    One variadic reduction, so the phases are computed once and the mask is materialised: the
    backward pass reads 1 byte per output instead of recomputing the four phases (XLA would
    otherwise fuse their k*k multiply-adds into every consumer of the residual).
    """
    z = jnp.stack(z)
    bits = jnp.broadcast_to((2 ** jnp.arange(4, dtype=jnp.uint8)).reshape((4,) + (1,) * (z.ndim - 1)), z.shape)

    def pick(a, b):
        (va, ma), (vb, mb) = a, b
        return jnp.maximum(va, vb), jnp.where(va > vb, ma, jnp.where(vb > va, mb, ma | mb))

    return jax.lax.reduce((z, bits), (jnp.array(-jnp.inf, z.dtype), jnp.array(0, jnp.uint8)), pick, (0,))


def route(hits, g):
    """The 4 phases' share of the pooled gradient g: g / (number of maxima) where the phase is one."""
    hit = [(hits >> r) & 1 for r in range(4)]
    share = g / ((hit[0] + hit[1]) + (hit[2] + hit[3])).astype(g.dtype)
    return [jnp.where(h == 1, share, 0) for h in hit]


def unpool(phases, h, w):
    """The 4 pooling phases (B, Hp, Wp, C), phase 2r + s at (2y+r, 2x+s), back on an h x w grid
    (zeros in the row/column that floor pooling dropped)."""
    b, hp, wp, c = phases[0].shape
    y = jnp.stack(phases).reshape(2, 2, b, hp, wp, c).transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * hp, 2 * wp, c)
    return jnp.pad(y, ((0, 0), (0, h - 2 * hp), (0, w - 2 * wp), (0, 0)))
