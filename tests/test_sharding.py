"""Mesh sizes and the shape-based sharding rule, against hand cases and unsharded gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmilab import sharding


def mesh(**sizes):
  return sharding.create_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, model=1) | sizes))


def test_mesh_shape_resolves_minus_one_and_names_bad_sizes():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "model": 1}, 8) == (4, 2, 1)
  with pytest.raises(ValueError, match="at most one"):
    sharding.mesh_shape({"data": -1, "fsdp": -1, "model": 1}, 8)
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.mesh_shape({"data": 3, "fsdp": 2, "model": 1}, 8)


def test_array_spec_hand_cases():
  m = mesh(data=2, fsdp=2, model=2)
  assert sharding.array_spec((3, 3, 64, 128), m, ("fsdp",), 0) == P(None, None, "fsdp", "model")
  assert sharding.array_spec((7,), m, ("fsdp",), 0) == P(None)                # nothing divides 7
  assert sharding.array_spec((64, 64), m, ("fsdp",), 2**14) == P(None, None)  # too small to split
  assert sharding.array_spec((256, 64), m, ("data", "fsdp"), 0) == P("data", "model")


def _conv_grads(groups, mesh_sizes):
  m = mesh(**mesh_sizes)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 16, 16, 32)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(3, 3, 32 // groups, 32)).astype(np.float32))

  def f(k, x):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=groups)
    return jnp.sum(jnp.sin(y))

  expected = jax.grad(f)(kernel, x)
  spec = sharding.array_spec(kernel.shape, m, ("fsdp",), 0)
  got = jax.jit(jax.grad(f))(jax.device_put(kernel, NamedSharding(m, spec)),
                             jax.device_put(x, sharding.batch_sharding(m)))
  return got, expected


@pytest.mark.parametrize("groups,mesh_sizes", [(1, dict(data=2, fsdp=2, model=2)),
                                               (32, dict(data=2, fsdp=4, model=1))])
def test_rule_gives_exact_conv_gradients(groups, mesh_sizes):
  got, expected = _conv_grads(groups, mesh_sizes)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.xfail(strict=True, reason="XLA SPMD bug (jax 0.10.2): depthwise-conv kernel gradient "
                   "multiplied by the 'model' axis size; check_tensor_parallel refuses such meshes")
def test_depthwise_conv_gradient_with_replicated_batch_axis():
  got, expected = _conv_grads(32, dict(data=2, fsdp=2, model=2))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_tensor_parallel_is_refused_for_depthwise_models():
  params = {"dw": jax.ShapeDtypeStruct((3, 3, 1, 16), jnp.float32)}
  sharding.check_tensor_parallel(mesh(data=4, fsdp=2), params, "nafnet")   # model = 1: fine
  with pytest.raises(ValueError, match="config.mesh.model=2: nafnet has depthwise"):
    sharding.check_tensor_parallel(mesh(data=2, fsdp=2, model=2), params, "nafnet")
