"""metrics.jsonl on gs:// is appended (GCS compose), not rewritten, and a resume's truncation keeps
what it should; against an in-process GCS emulator (no network)."""

from __future__ import annotations

import json

import portpicker
import pytest
from etils import epath

from jaxmilab import metrics as metrics_lib

BUCKET = "bucket"


@pytest.fixture()
def gcs(monkeypatch):
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top

  port = portpicker.pick_unused_port()
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  for key, value in dict(
      STORAGE_EMULATOR_HOST=url,
      EPATH_USE_TF="false",
      FSSPEC_GCS_TOKEN="anon",
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
      NO_GCE_CHECK="true",
  ).items():
    monkeypatch.setenv(key, value)
  import fsspec  # pylint: disable=g-import-not-at-top

  fsspec.filesystem("gs").clear_instance_cache()  # gcsfs reads the emulator address on creation
  # epath caches its EPATH_USE_TF reading (functools.cache) at the first gs:// path of the process:
  # an earlier test in this worker would otherwise leave it on TensorFlow's backend (real GCS).
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top

  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(metrics_lib, "_COMPOSE_FAILED", [])
  storage = server._storage  # pylint: disable=protected-access
  try:
    yield storage
  finally:
    server.stop()
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def _text(storage, name):
  return storage.get_file(BUCKET, name).decode()


def test_gs_flush_appends_by_compose_and_truncation_keeps_earlier_steps(gcs, monkeypatch):
  # A compose failure earlier in this worker (another test's emulator) switches the process to
  # rewrites for good; this test starts from a process where compose has not failed.
  monkeypatch.setattr(metrics_lib, "_COMPOSE_FAILED", [])
  path = f"gs://{BUCKET}/run/{metrics_lib.JSONL_NAME}"
  writer = metrics_lib.JsonlWriter(path)
  writer.write_scalars(1, {"train/loss": 1.0})
  writer.write_scalars(2, {"train/loss": 0.5, "eval/psnr": 20.0})
  writer.flush()
  first = _text(gcs, "run/metrics.jsonl")
  assert [json.loads(l)["step"] for l in first.splitlines()] == [1, 2, 2]

  # The mechanism: later flushes never write the whole file (a rewrite goes through epath).
  def no_rewrite(self, *args, **kwargs):
    raise AssertionError(f"metrics.jsonl rewritten: {self}")

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(type(epath.Path(path)), "write_text", no_rewrite)
    writer.write_scalars(3, {"train/loss": 0.25})
    writer.flush()
    writer.flush()  # nothing new: nothing written
    writer.write_scalars(4, {"train/loss": 0.125})
    writer.close()
  text = _text(gcs, "run/metrics.jsonl")
  assert text.startswith(first)
  assert [(r["step"], r["split"]) for r in map(json.loads, text.splitlines())] == [
      (1, "train"),
      (2, "train"),
      (2, "eval"),
      (3, "train"),
      (4, "train"),
  ]
  assert not metrics_lib._COMPOSE_FAILED  # pylint: disable=protected-access
  assert [n for n in gcs.objects[BUCKET] if ".append-" in n] == []  # parts deleted

  # A resume from step 2: rows after it go (one rewrite), the writer appends after them.
  metrics_lib.truncate_jsonl(f"gs://{BUCKET}/run", 2)
  writer = metrics_lib.JsonlWriter(path)
  writer.write_scalars(3, {"train/loss": 0.3})
  writer.close()
  rows = [json.loads(l) for l in _text(gcs, "run/metrics.jsonl").splitlines()]
  assert [(r["step"], r.get("loss")) for r in rows] == [(1, 1.0), (2, 0.5), (2, None), (3, 0.3)]
