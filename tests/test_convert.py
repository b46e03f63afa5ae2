"""Checkpoint import: official-format .pth / .safetensors of the PyTorch transcriptions
(tests/torch_reference/nafnet.py, archs.py, official state-dict keys) with random
weights are read without torch's unpickler, mapped to flax, and must reproduce the PyTorch
outputs; malicious pickles are refused without running; wrong architectures list every key.

`CASES` and `case_data` are shared with tests/test_restore.py.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import sys
import zipfile

import numpy as np
import pytest

from jaxmilab import convert
from jaxmilab import restore
from jaxmilab.convert import mapping
from jaxmilab.convert import torch_checkpoint
from tests import torch_reference

_U_NET = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])
_SWIN = dict(
    img_size=64, embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=4, mlp_ratio=2.0
)
# restore.MODELS name -> (torch network, constructor kwargs, torch-side reflect pre-padding as
# in DCPT's `pre_test` (None: the official forward pads by itself)).
CASES = {
    "nafnet_tiny": (
        "nafnet",
        dict(width=8, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1)),
        None,
    ),
    # DCPT's NAFNetBaseline: decoders stored as `decoder{i}`, reflect pre-padding.
    "nafnet_dcpt_tiny": (
        "nafnet_dcpt",
        dict(width=8, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1)),
        4,
    ),
    "swinir_tiny": ("swinir", _SWIN, None),
    "swinir_dcpt_tiny": ("swinir_dcpt", _SWIN, 4),
    "restormer_tiny": ("restormer", _U_NET, 8),
    "restormer_dcpt_tiny": ("restormer_dcpt", _U_NET, 8),
    "promptir_tiny": (
        "promptir",
        dict(_U_NET, prompt_dims=(4, 8, 16), prompt_len=3, prompt_sizes=(10, 4, 3)),
        8,
    ),
}
SHAPE = (21, 13)  # not a multiple of any padding unit; PromptIR tiny pads it to 24x16


def build_torch(name: str):
  """(eval torch net with random weights, its official state dict) for a CASES entry."""
  torch = pytest.importorskip("torch")
  arch, kwargs, _ = CASES[name]
  net = torch_reference.random_net(arch, **kwargs)
  sd = released_state_dict(arch, net)
  if arch == "promptir":  # keys of va1shn9v's unused modules, skipped by the converter
    sd["chnl_reduce1.weight"] = torch.randn(4, 4, 1, 1)
  return net, sd


def released_state_dict(arch: str, net) -> collections.OrderedDict:
  """The state dict of `net` (copies of its tensors) under the keys of the official `arch`
  checkpoints: DCPT's NAFNet stores its decoders as attributes (MILab-PKU/dcpt nafnet_arch.py:
  setattr(self, f"decoder{i}")), so there `decoders.{i}.` is `decoder{i}.`."""
  sd = collections.OrderedDict()
  for key, value in net.state_dict().items():
    if arch == "nafnet_dcpt":
      key = re.sub(r"^decoders\.(\d+)\.", r"decoder\1.", key)
    sd[key] = value.clone()
  return sd


def torch_restore(net, name: str, image: np.ndarray) -> np.ndarray:
  """The official pipeline on image [H, W, 3] in [0, 1]: pre-pad, forward, crop -> NHWC."""
  torch = pytest.importorskip("torch")
  from tests.torch_reference import archs as torch_archs  # pylint: disable=g-import-not-at-top

  pad = CASES[name][2]
  h, w = image.shape[:2]
  x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))[None].astype(np.float32))
  with torch.no_grad():
    y = net(torch_archs.reflect_pad(x, pad) if pad else x)
  if isinstance(y, tuple):
    y = y[0]
  return y[0, :, :h, :w].numpy().transpose(1, 2, 0)


@pytest.fixture(scope="module", params=list(CASES))
def case_data(request, tmp_path_factory):
  """name, paths of the .pth / .safetensors checkpoints, uint8 input image, torch output."""
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top

  name = request.param
  net, sd = build_torch(name)
  folder = tmp_path_factory.mktemp(name)
  pth = str(folder / f"{name}.pth")
  torch.save({"params": sd}, pth)  # BasicSR's save_network layout
  st = str(folder / f"{name}.safetensors")
  save_file({k: v.contiguous() for k, v in sd.items()}, st)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, SHAPE + (3,), dtype=np.uint8)
  y_t = torch_restore(net, name, image.astype(np.float32) / 255.0)
  # Not degenerate: the network changes the image, and most pixels stay inside [0, 1].
  assert np.abs(y_t - image / 255.0).max() > 0.05
  assert np.mean((y_t > 0) & (y_t < 1)) > 0.5, name
  return dict(name=name, pth=pth, safetensors=st, image=image, torch_out=y_t, sd=sd)


# --------------------------------------------------------------------------------------------
# Parity with PyTorch.


@pytest.mark.torch
def test_imported_weights_reproduce_torch(case_data):
  name = case_data["name"]
  spec = restore.get_spec(name)
  from_pth = convert.load_torch_params(case_data["pth"], spec.model)
  from_st = convert.load_torch_params(case_data["safetensors"], spec.model)
  flat_pth, flat_st = mapping.flatten(from_pth), mapping.flatten(from_st)
  assert flat_pth.keys() == flat_st.keys()
  for k in flat_pth:
    np.testing.assert_array_equal(flat_pth[k], flat_st[k], err_msg=k)
  y = restore.Restorer(name, from_pth)(case_data["image"].astype(np.float32) / 255.0)
  np.testing.assert_allclose(y, case_data["torch_out"], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.torch
def test_reader_matches_torch_load_weights_only(case_data):
  torch = pytest.importorskip("torch")
  ours = torch_checkpoint.load_state_dict(case_data["pth"])
  ref = torch.load(case_data["pth"], weights_only=True)["params"]
  assert list(ours) == list(ref)
  for k, v in ref.items():
    np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


@pytest.mark.torch
def test_reader_formats_dtypes_and_views(tmp_path, monkeypatch):
  """Zip and legacy .pth, bf16 / fp16 / int tensors, non-contiguous views, params_ema first."""
  torch = pytest.importorskip("torch")
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  sd = collections.OrderedDict(
      view=base[1:, ::2],  # offset + strides into a shared storage
      t=base.t(),
      whole=base,
      half=torch.randn(3, 2).half(),
      bf16=torch.randn(5).bfloat16(),
      index=torch.tensor([[3, 1], [2, 0]]),
      flag=torch.tensor([True, False]),
  )
  ema = collections.OrderedDict(view=base[0])
  for legacy in (False, True):
    path = str(tmp_path / f"ckpt_{legacy}.pth")
    torch.save({"params": sd, "params_ema": ema}, path, _use_new_zipfile_serialization=not legacy)
    raw = torch_checkpoint.read_checkpoint(path)
    for k, v in sd.items():
      ref = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
      got = raw["params"][k]
      assert got.shape == ref.shape, (legacy, k)
      np.testing.assert_array_equal(got.astype(ref.dtype), ref, err_msg=f"{legacy} {k}")
    np.testing.assert_array_equal(torch_checkpoint.load_state_dict(path)["view"], base[0].numpy())
  # The reader never needs torch.
  with monkeypatch.context() as m:
    m.setitem(sys.modules, "torch", None)  # `import torch` would now fail
    np.testing.assert_array_equal(torch_checkpoint.load_state_dict(path)["view"], base[0].numpy())
  # Bare state dict with DataParallel prefixes (BasicSR strips `module.`).
  path = str(tmp_path / "bare.pth")
  torch.save({"module.a.weight": base}, path)
  assert list(torch_checkpoint.load_state_dict(path)) == ["a.weight"]


def test_safetensors_reader_without_torch(tmp_path):
  """The reader against the safetensors library's own numpy writer (plain, writable copies)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  tensors = {
      "a": np.arange(6, dtype=np.float32).reshape(2, 3),
      "b": np.array([1, -2], np.int64),
      "c": np.ones((0, 3), np.float16),
  }
  path = str(tmp_path / "w.safetensors")
  save_file(tensors, path, metadata={"format": "pt"})
  got = torch_checkpoint.read_safetensors(path)
  assert got.keys() == tensors.keys()
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype
    np.testing.assert_array_equal(got[k], v)
    assert got[k].flags.writeable and got[k].flags.owndata  # not a view of the memory map
  os.remove(path)  # the map is closed: no file held
  np.testing.assert_array_equal(got["a"], tensors["a"])


@pytest.mark.torch
def test_safetensors_bfloat16_and_load_state_dict(tmp_path):
  """BF16 (no numpy dtype) comes back bit-exact as ml_dtypes.bfloat16; wrappers are unwrapped."""
  torch = pytest.importorskip("torch")
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top

  w = torch.randn(3, 4).bfloat16()
  path = str(tmp_path / "bf16.safetensors")
  save_file({"module.w": w, "module.b": torch.arange(3, dtype=torch.float32)}, path)
  sd = torch_checkpoint.load_state_dict(path)
  assert sorted(sd) == ["b", "w"] and sd["w"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(
      sd["w"].view(np.uint16), w.view(torch.int16).numpy().view(np.uint16)
  )
  np.testing.assert_array_equal(sd["b"], np.arange(3, dtype=np.float32))


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00",
        b"\x05\x00\x00\x00\x00\x00\x00\x00{abc",
        b"\xff" * 8 + b"{}",
        b"\x2c\x00\x00\x00\x00\x00\x00\x00"
        b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
    ],
)
def test_broken_safetensors_raise_checkpoint_error(tmp_path, data):
  """Truncated, garbled, oversized-header and short-data files: a CheckpointError naming the
  file."""
  path = str(tmp_path / "broken.safetensors")
  with open(path, "wb") as f:
    f.write(data)
  with pytest.raises(torch_checkpoint.CheckpointError, match="broken.safetensors"):
    torch_checkpoint.load_state_dict(path)


# --------------------------------------------------------------------------------------------
# Malicious and broken files.


class _Payload:
  """Unpickling this calls os.mkdir(marker): the classic code-execution payload."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def _torch_zip(path: str, obj) -> None:
  """Writes `obj` with plain pickle into the torch.save zip layout (<archive>/data.pkl ...)."""
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
    zf.writestr("archive/byteorder", "little")
    zf.writestr("archive/version", "3\n")


def test_payload_is_live_when_unpickled_naively(tmp_path):
  """The payload of the next test does run under plain pickle (so that test can fail)."""
  marker = str(tmp_path / "pwned_plain")
  pickle.loads(pickle.dumps({"params": _Payload(marker)}, protocol=2))
  assert os.path.exists(marker)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_checkpoint_is_refused_without_running(tmp_path, layout):
  marker = str(tmp_path / "pwned")
  path = str(tmp_path / "evil.pth")
  obj = {"params": collections.OrderedDict(w=_Payload(marker))}
  if layout == "zip":
    _torch_zip(path, obj)
  else:
    with open(path, "wb") as f:
      pickle.dump(obj, f, protocol=2)
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match=r"evil\.pth.*mkdir"):
    torch_checkpoint.load_state_dict(path)
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError):
    convert.load_torch_params(path, restore.get_spec("nafnet_tiny").model)
  assert not os.path.exists(marker)


def test_corrupt_and_unknown_files(tmp_path):
  bad = tmp_path / "noise.pth"
  bad.write_bytes(b"\x00\x01garbage" * 10)
  with pytest.raises(torch_checkpoint.CheckpointError, match="noise.pth"):
    torch_checkpoint.load_state_dict(str(bad))
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    torch_checkpoint.load_state_dict(str(tmp_path / "nope.pth"))
  # A zip whose tensor reads past its storage (crafted strides) is rejected, not read OOB.
  path = str(tmp_path / "oob.pth")
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", _oob_pickle())
    zf.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
  with pytest.raises(torch_checkpoint.CheckpointError, match="past its storage"):
    torch_checkpoint.load_state_dict(path)


def _oob_pickle() -> bytes:
  """data.pkl of {'w': tensor(size 100, stride 1) over a 4-element storage}, hand-assembled."""
  out = io.BytesIO()
  out.write(b"\x80\x02}X\x01\x00\x00\x00w")  # PROTO 2, {}, 'w'
  out.write(b"ctorch._utils\n_rebuild_tensor_v2\n(")  # GLOBAL, MARK
  out.write(
      b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
      b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
  )  # ('storage', ..., 4) PERSID
  out.write(b"K\x00Kd\x85K\x01\x85\x89}t")  # 0, (100,), (1,), False, {}
  out.write(b"Rs.")  # REDUCE, SETITEM, STOP
  return out.getvalue()


# --------------------------------------------------------------------------------------------
# Key / shape mismatches.


@pytest.mark.torch
def test_wrong_architecture_lists_every_key(tmp_path):
  torch = pytest.importorskip("torch")
  _, sd = build_torch("swinir_tiny")
  path = str(tmp_path / "official_swinir.pth")
  torch.save({"params": sd}, path)
  with pytest.raises(mapping.CheckpointMismatchError) as err:
    convert.load_torch_params(path, restore.get_spec("swinir_dcpt_tiny").model)
  msg = str(err.value)
  assert "official_swinir.pth" in msg and "swinir_dcpt_tiny" in msg
  # Every RSTB is missing under its DCPT name and unexpected under the official one, and every
  # relative position bias table is unexpected: all in the one message.
  assert "encode_layers_0/residual_group/blocks_0/attn/qkv/kernel" in msg
  assert "decode_layers0/conv/kernel" in msg
  assert msg.count("attn.relative_position_bias_table -> ") == 4
  assert "layers.1.conv.weight -> layers_1/conv/kernel" in msg
  # A shape mismatch (wider NAFNet) is reported with both shapes.
  _, sd = build_torch("nafnet_tiny")
  torch.save({"params": sd}, path)
  with pytest.raises(
      mapping.CheckpointMismatchError,
      match=r"intro\.weight -> intro/kernel: " r"\(3, 3, 3, 8\) vs \(3, 3, 3, 4\)",
  ):
    convert.load_torch_params(path, {"name": "nafnet", "preset": "nafnet_tiny", "width": 4})
  # Missing keys: a truncated state dict.
  del sd["ending.bias"], sd["intro.weight"]
  torch.save({"params": sd}, path)
  with pytest.raises(
      mapping.CheckpointMismatchError,
      match=r"(?s)2 missing.*ending/bias \(3,\); intro/kernel \(3, 3, 3, 8\)",
  ):
    convert.load_torch_params(path, restore.get_spec("nafnet_tiny").model)


def test_check_params_limit_gives_one_bounded_line_and_merge_takes_named_parts():
  """`limit`: one line with the counts and the first keys of each kind (init_from's form);
  `methods.base.merge_variables(parts=...)` compares and copies only the named sub-trees."""
  from jaxmilab.methods import base  # pylint: disable=g-import-not-at-top

  want = {"a": {f"w{i:02d}": np.zeros((2,)) for i in range(30)}, "b": {"k": np.zeros((3,))}}
  got = {"a": {f"w{i:02d}": np.ones((2,)) for i in range(5, 30)}, "b": {"k": np.ones((4,))}}
  with pytest.raises(mapping.CheckpointMismatchError) as err:
    mapping.check_params(got, want, source="ckpt", model="net", hint="Check it.", limit=3)
  msg = str(err.value)
  assert "\n" not in msg and len(msg) < 400, msg
  assert msg.startswith("Checkpoint 'ckpt' does not match model 'net': 5 missing, 0 unexpected")
  assert "a/w00 (2,); a/w01 (2,); a/w02 (2,); ... (2 more)." in msg and "b/k: (4,) vs (3,)" in msg
  assert msg.endswith("Check it.")
  with pytest.raises(mapping.CheckpointMismatchError) as err:  # unbounded: every key, by line
    mapping.check_params(got, want, source="ckpt", model="net", hint="Check it.")
  assert str(err.value).count("\n") == 2 and "a/w04 (2,)" in str(err.value)

  zeros, ones = lambda n: np.zeros(n, np.float32), lambda n: np.ones(n, np.float32)
  fresh = {"params": {"enc": {"k": zeros(2)}, "head": {"k": zeros(2)}}}
  loaded = {"params": {"enc": {"k": ones(2)}, "head": {"k": ones(3)}}}
  merged = base.merge_variables(fresh, loaded, strict=True, parts=[("params", "enc")])
  np.testing.assert_array_equal(merged["params"]["enc"]["k"], 1.0)
  np.testing.assert_array_equal(merged["params"]["head"]["k"], 0.0)  # not a named part
  loaded["params"]["enc"]["extra"] = ones(1)
  with pytest.raises(mapping.CheckpointMismatchError, match=r"1 unexpected.*params/enc/extra"):
    base.merge_variables(fresh, loaded, strict=True, parts=[("params", "enc")], limit=4)


def test_mapping_rule_on_hand_written_keys():
  """The documented renames, one key each (no model involved)."""
  conv = np.zeros((5, 4, 3, 2), np.float32)
  cases = {
      "encoder_level1.body.0.norm1.body.weight": (np.ones(4), "encoder_level1_0/norm1/scale"),
      "decoder2.0.sca.1.weight": (conv, "decoders_2_0/sca/kernel"),
      "ups.1.0.weight": (conv, "ups_1/kernel"),
      "decode_layers0.residual_group.blocks.1.attn.qkv.weight": (
          np.zeros((6, 2)),
          "decode_layers0/residual_group/blocks_1/attn/qkv/kernel",
      ),
      "down1_2.body.0.weight": (conv, "down1_2/body_0/kernel"),
      "latent.body.3.attn.temperature": (np.ones((2, 1, 1)), "latent_3/attn/temperature"),
      "prompt1.prompt_param": (np.zeros((1, 3, 4, 5, 5)), "prompt1/prompt_param"),
  }
  for key, (value, flax_path) in cases.items():
    path, array = mapping.convert_key(key, value)
    assert "/".join(path) == flax_path, key
  assert mapping.convert_key("ups.1.0.weight", conv)[1].shape == (3, 2, 4, 5)  # HWIO
  assert mapping.convert_key("prompt1.prompt_param", np.zeros((1, 3, 4, 5, 5)))[1].shape == (
      3,
      5,
      5,
      4,
  )
  assert mapping.convert_key("layers.0.residual_group.blocks.1.attn_mask", conv) is None
  assert mapping.convert_key("reduce_noise_channel_2.weight", conv) is None


# --------------------------------------------------------------------------------------------
# Fine-tuning from an imported checkpoint (restoration method's init_from, direct call).


@pytest.mark.torch
def test_fine_tune_starts_from_imported_weights(tmp_path):
  torch = pytest.importorskip("torch")
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab.data.base import DataInfo  # pylint: disable=g-import-not-at-top
  from jaxmilab.methods import restoration  # pylint: disable=g-import-not-at-top

  net, sd = build_torch("nafnet_tiny")
  path = str(tmp_path / "nafnet.pth")
  torch.save({"params_ema": sd, "params": collections.OrderedDict()}, path)
  config = config_lib.load("configs/restoration.py:smoke")
  assert config.model.preset == "nafnet_tiny"
  loaded = convert.load_as_variables(path, config.model)
  assert loaded["model_state"] == {}
  method = restoration.Method(config, DataInfo(num_classes=5))
  rng = np.random.default_rng(1)
  batch = {
      "lq": rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32),
      "gt": rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32),
  }
  fresh = method.init_variables(jax.random.PRNGKey(0), batch)
  merged = method.init_from(fresh, {"params": loaded["params"], **loaded["model_state"]})
  params = merged["params"]
  # The fine-tuning loss at step 0 is the L1 of the PyTorch network's output.
  with torch.no_grad():
    y_t = net(torch.from_numpy(batch["lq"].transpose(0, 3, 1, 2)))[0].numpy().transpose(0, 2, 3, 1)
  loss_and_grad = jax.jit(
      jax.value_and_grad(lambda p: method.loss(p, {}, batch, jax.random.PRNGKey(0))[0])
  )
  loss, grads = loss_and_grad(params)
  np.testing.assert_allclose(float(loss), np.abs(y_t - batch["gt"]).mean(), rtol=1e-5)
  tx = optax.sgd(1e-2)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(loss_and_grad(optax.apply_updates(params, updates))[0]) < float(loss)


# --------------------------------------------------------------------------------------------
# Official sizes: the full key sets of every released architecture (no forward pass).

_OFFICIAL_TORCH = {
    "nafnet_dcpt": (
        "nafnet_dcpt",
        dict(width=64, enc_blk_nums=(1, 1, 1, 28), middle_blk_num=1, dec_blk_nums=(1, 1, 1, 1)),
    ),
    "nafnet_sidd": (
        "nafnet",
        dict(width=64, enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12, dec_blk_nums=(2, 2, 2, 2)),
    ),
    "swinir": ("swinir", {}),
    "swinir_dcpt": ("swinir_dcpt", {}),
    "restormer": ("restormer", {}),
    "restormer_dcpt": ("restormer_dcpt", {}),
    "promptir": ("promptir", {}),
    "promptir_dcpt": ("promptir_dcpt", {}),
}


def _official_state_dict(name: str) -> dict[str, np.ndarray]:
  torch = pytest.importorskip("torch")
  arch, kwargs = _OFFICIAL_TORCH[name]
  with torch.device("meta"):  # shapes only: no memory, no init time
    net = torch_reference.build(arch, **kwargs)
    sd = released_state_dict(arch, net)
  # Zeros of the right shapes (no memory either).
  return {k: np.broadcast_to(np.zeros((), np.float32), tuple(v.shape)) for k, v in sd.items()}


_FAST = ("swinir_dcpt", "restormer_dcpt")  # the others take 2-4 s each: slow


@pytest.mark.torch
@pytest.mark.parametrize(
    "name", [n if n in _FAST else pytest.param(n, marks=pytest.mark.slow) for n in _OFFICIAL_TORCH]
)
def test_official_key_sets_convert_completely(name):
  sd = _official_state_dict(name)
  params, origin = mapping.convert_state_dict(sd)
  expected, label = convert.expected_params(restore.get_spec(name).model)
  mapping.check_params(params, expected, source="<official state dict>", model=label, origin=origin)
  # Only buffers and PromptIR's unused modules are skipped.
  skipped = sorted(set(sd) - {k for k, _ in origin.values()})
  assert all(
      re.search(r"relative_position_index|attn_mask|chnl_reduce|reduce_noise_channel", k)
      for k in skipped
  ), skipped[:5]
  if name == "promptir":
    assert len([k for k in skipped if "reduce" in k]) == 6


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("name", ["nafnet_dcpt", "swinir_dcpt", "restormer_dcpt", "promptir_dcpt"])
def test_official_size_checkpoint_restores_like_torch(name, tmp_path):
  """Full DCPT networks, random weights, .pth -> restore CLI -> PNG equal to the PyTorch pipeline
  (DCPT `pre_test`: reflect pad to window_size 16 / 8, forward, crop; tensor2img)."""
  torch = pytest.importorskip("torch")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tests.torch_reference import archs as torch_archs  # pylint: disable=g-import-not-at-top

  arch, kwargs = _OFFICIAL_TORCH[name]
  net = torch_reference.random_net(arch, **kwargs)
  sd = released_state_dict(arch, net)
  pth = str(tmp_path / f"dcpt_{name}.pth")
  torch.save({"params_ema": sd}, pth)
  image = np.random.default_rng(0).integers(0, 256, (37, 29, 3), dtype=np.uint8)
  Image.fromarray(image).save(tmp_path / "in.png")
  pad = 16 if arch.startswith("nafnet") else 8  # test_*_5d.yml window_size
  x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
  with torch.no_grad():
    y = net(torch_archs.reflect_pad(x, pad))
  y = (y[0] if isinstance(y, tuple) else y)[0, :, :37, :29].numpy().transpose(1, 2, 0)
  want = (np.clip(y, 0, 1) * 255.0).round().astype(int)
  assert (
      restore.main(
          [
              f"--model={name}",
              f"--weights={pth}",
              f"--input={tmp_path / 'in.png'}",
              f"--output={tmp_path / 'out.png'}",
          ]
      )
      == 0
  )
  got = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
  diff = np.abs(got - want)
  # The same weights through ~40 float32 blocks in two frameworks: summation order moves a few
  # values across a rounding boundary of the uint8 image (seen: 6 of 3,219 for restormer_dcpt),
  # never by more than one level; a wrong key mapping differs by tens of levels almost everywhere.
  assert diff.max() <= 1 and (diff > 0).mean() <= 0.005, (name, (diff > 0).sum())
