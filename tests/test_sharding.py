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
  # Tensor parallelism only where a rule asks for it (model_dim); otherwise "model" splits nothing.
  assert sharding.array_spec((3, 3, 64, 128), m, ("fsdp",), 0) == P(None, None, None, "fsdp")
  assert sharding.array_spec((3, 3, 64, 128), m, ("fsdp",), 0, -1) == P(None, None, "fsdp", "model")
  assert sharding.array_spec((7,), m, ("fsdp",), 0) == P(None)  # nothing divides 7
  assert sharding.array_spec((64, 64), m, ("fsdp",), 2**14) == P(None, None)  # too small to split
  assert sharding.array_spec((64, 64), m, ("fsdp",), 2**14, 0) == P("model", None)  # rule: always
  assert sharding.array_spec((256, 64), m, ("data", "fsdp"), 0, -1) == P("data", "model")
  with pytest.raises(ValueError, match="not divisible by mesh.model=2"):
    sharding.array_spec((3, 7), m, ("fsdp",), 0, -1)


def test_tensor_parallel_rules_select_parameters_by_path():
  m = mesh(data=2, fsdp=2, model=2)
  config = ml_collections.ConfigDict(
      dict(
          shard_params_over=("fsdp",),
          min_shard_size=0,
          tensor_parallel=((r"attn/qkv/kernel$", -1), (r"mlp/fc2/kernel$", 0)),
      )
  )
  tree = {
      "params": {
          "attn": {"qkv": {"kernel": jnp.zeros((16, 48)), "bias": jnp.zeros((48,))}},
          "mlp": {"fc2": {"kernel": jnp.zeros((32, 16))}},
          "conv": {"kernel": jnp.zeros((3, 3, 16, 16))},
      },
      "mu": {"attn": {"qkv": {"kernel": jnp.zeros((16, 48))}}},
  }
  specs = jax.tree.map(lambda s: s.spec, sharding.state_shardings(tree, m, config))
  assert specs["params"]["attn"]["qkv"]["kernel"] == P("fsdp", "model")
  assert specs["params"]["attn"]["qkv"]["bias"] == P("fsdp")  # no rule: no "model"
  assert specs["params"]["mlp"]["fc2"]["kernel"] == P("model", "fsdp")
  assert specs["params"]["conv"]["kernel"] == P(None, None, None, "fsdp")
  assert specs["mu"]["attn"]["qkv"]["kernel"] == P("fsdp", "model")  # Adam moment: same rule
  with pytest.raises(ValueError, match="tensor_parallel"):
    sharding.tensor_parallel_rules({"tensor_parallel": (("x",),)})


def test_batch_sharded_activations_constrains_conv_outputs_only_under_a_mesh():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  conv = nn.Conv(4, (3, 3))
  x = jnp.ones((8, 8, 8, 3))
  variables = conv.init(jax.random.key(0), x)

  def f(v, x):
    with sharding.batch_sharded_activations():
      return conv.apply(v, x)

  assert "sharding_constraint" not in str(jax.make_jaxpr(f)(variables, x))  # no mesh: no-op
  with jax.set_mesh(mesh(data=4, fsdp=2)):
    jaxpr = str(jax.make_jaxpr(f)(variables, x))
  assert "sharding_constraint" in jaxpr and "data" in jaxpr


def _conv_grads(groups, mesh_sizes):
  m = mesh(**mesh_sizes)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 16, 16, 32)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(3, 3, 32 // groups, 32)).astype(np.float32))

  def f(k, x):
    y = jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )
    return jnp.sum(jnp.sin(y))

  expected = jax.grad(f)(kernel, x)
  spec = sharding.array_spec(kernel.shape, m, ("fsdp",), 0)
  got = jax.jit(jax.grad(f))(
      jax.device_put(kernel, NamedSharding(m, spec)), jax.device_put(x, sharding.batch_sharding(m))
  )
  return got, expected


@pytest.mark.parametrize(
    "groups,mesh_sizes", [(1, dict(data=2, fsdp=2, model=2)), (32, dict(data=2, fsdp=4, model=1))]
)
def test_rule_gives_exact_conv_gradients(groups, mesh_sizes):
  got, expected = _conv_grads(groups, mesh_sizes)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.xfail(
    strict=True,
    reason="XLA SPMD bug (jax 0.10.2): depthwise-conv kernel gradient "
    "multiplied by the 'model' axis size; check_tensor_parallel refuses such meshes",
)
def test_depthwise_conv_gradient_with_replicated_batch_axis():
  got, expected = _conv_grads(32, dict(data=2, fsdp=2, model=2))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_tensor_parallel_is_refused_for_depthwise_models():
  params = {"dw": jax.ShapeDtypeStruct((3, 3, 1, 16), jnp.float32)}
  sharding.check_tensor_parallel(mesh(data=4, fsdp=2), params, "nafnet")  # model = 1: fine
  with pytest.raises(ValueError, match="config.mesh.model=2: nafnet has depthwise"):
    sharding.check_tensor_parallel(mesh(data=2, fsdp=2, model=2), params, "nafnet")


# -- Multislice -------------------------------------------------------------------------------


def _tpu_devices(topology_name: str, num_slices: int):
  import os  # pylint: disable=g-import-not-at-top

  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  return list(
      topologies.get_topology_desc(
          platform="tpu", topology_name=topology_name, num_slices=num_slices
      ).devices
  )


@pytest.mark.slow  # CI installs libtpu for the slow step only
@pytest.mark.libtpu
def test_two_slices_split_data_and_never_shard_parameters_over_dcn():
  devices = _tpu_devices("v5e:2x2", 2)  # 2 slices x 4 chips, descriptions only
  assert sharding.num_slices(devices) == 2
  m = sharding.create_mesh({"data": 2, "fsdp": -1, "model": 1}, devices)
  assert dict(m.shape) == {"data": 2, "fsdp": 4, "model": 1}
  assert sharding.dcn_axes(m) == {"data": 2}
  # Each "data" row is one whole slice: FSDP stays on ICI.
  for row, s in zip(m.devices, (0, 1)):
    assert {d.slice_index for d in row.ravel()} == {s}
  tree = {"w": jnp.zeros((64, 256))}
  cfg = {"shard_params_over": ("fsdp",), "min_shard_size": 0}
  shardings = sharding.state_shardings(tree, m, cfg)
  assert shardings["w"].spec == P(None, "fsdp")
  assert not sharding.params_sharded_over_dcn(shardings, m)
  # The pod's ZeRO-3 rule would shard over "data", which now crosses slices: an error, unless
  # asked for explicitly.
  with pytest.raises(ValueError, match="spans 2 slices"):
    sharding.state_shardings(tree, m, {"shard_params_over": ("data", "fsdp"), "min_shard_size": 0})
  zero = sharding.state_shardings(
      tree, m, {"shard_params_over": ("data", "fsdp"), "min_shard_size": 0, "params_over_dcn": True}
  )
  assert sharding.params_sharded_over_dcn(zero, m)
  # data=4 on 2 slices: 2 replicas per slice, "data" still spans both slices.
  m4 = sharding.create_mesh({"data": 4, "fsdp": -1, "model": 1}, devices)
  assert sharding.dcn_axes(m4) == {"data": 2}


@pytest.mark.slow  # CI installs libtpu for the slow step only
@pytest.mark.libtpu
def test_a_multislice_layout_that_cannot_be_built_is_an_error_not_a_reshape():
  devices = _tpu_devices("v5e:2x2", 2)
  with pytest.raises(ValueError, match="multiple of 2"):  # slices must be data replicas
    sharding.create_mesh({"data": 1, "fsdp": -1, "model": 1}, devices)
  with pytest.raises(ValueError, match="restricts single-slice runs"):
    sharding.create_mesh({"data": 2, "fsdp": 3, "model": 1, "num_devices": 6}, devices)


def test_cpu_devices_are_one_slice_and_reshaped_in_order():
  devices = jax.devices()[:8]
  assert sharding.num_slices(devices) == 1
  m = sharding.create_mesh({"data": 2, "fsdp": 4, "model": 1}, devices)
  assert list(m.devices.ravel()) == devices
  assert sharding.dcn_axes(m) == {}
