"""``layers.max_pool_5x5`` (separable shifted maxima, for speed) against a second implementation: flax's 5×5
``reduce_window`` max pool, which is torch's ``MaxPool2d(5, stride=1, padding=2)``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_jax.models import layers


def reduce_window_max_pool(x):
    return nn.max_pool(x, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 5, 7, 2), (3, 2, 3, 4)], ids=["8x8", "5x7", "2x3"])
def test_max_pool_5x5_matches_reduce_window_values_and_gradients(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape) - 3.0  # all negative: zero padding would win
    cotangent = jax.random.normal(jax.random.PRNGKey(1), shape)
    y, vjp = jax.vjp(layers.max_pool_5x5, x)
    y_ref, vjp_ref = jax.vjp(reduce_window_max_pool, x)
    np.testing.assert_array_equal(y, y_ref)
    # Continuous random inputs have no ties, so both route each cotangent to the window's unique arg-max.
    np.testing.assert_allclose(vjp(cotangent)[0], vjp_ref(cotangent)[0], rtol=1e-6, atol=1e-6)


def test_max_pool_5x5_in_bfloat16():
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 6, 6, 2)).astype(jnp.bfloat16)
    y = layers.max_pool_5x5(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(y, np.float32), np.asarray(reduce_window_max_pool(x), np.float32)
    )
