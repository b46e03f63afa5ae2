"""Name -> component: configs pick models, methods and datasets by string.

One explicit table per kind maps each name a config may use (`config.model.name`,
`config.method.name`, `config.data.name`) to the module that implements it, or to
"module:function" when one module implements several (the WSOL backbones). Only names in a
table resolve, so helper modules (`layers`, `transforms`, `common`, ...) are never mistaken for
components, and `available(kind)` lists exactly what `--help` may offer. Modules are imported
only when their name is asked for (a WSOL run never imports the restoration models).

Adding a component is writing its module and adding one line here; tests/test_structure.py
checks that every table entry imports and provides its entry point, and that every module
defining a component entry point (`create(config)` / `class Method`) is in a table.

Entry points: a model module has `create(config.model) -> nn.Module` (or the function a
"module:function" entry names); a method module has
`class Method(jaxmilab.methods.base.Method)`; a data module has `create(config, *, batch_size,
seed, process_index, process_count) -> jaxmilab.data.base.Datasets`. Any of them may declare
`CONFIG_DEFAULTS` (read by jaxmilab.config_lib).
"""

from __future__ import annotations

import importlib
import types
from typing import Any

MODELS: dict[str, str] = {
    # Restoration backbones.
    "nafnet": "jaxmilab.models.nafnet",
    "promptir": "jaxmilab.models.promptir",
    "restormer": "jaxmilab.models.restormer",
    "swinir": "jaxmilab.models.swinir",
    "teaformer": "jaxmilab.models.teaformer",
    # OPD.
    "unet": "jaxmilab.models.unet",
    # WSOL backbones.
    "inceptionv3_wsol": "jaxmilab.models.wsol_backbones:create_inceptionv3",
    "resnet50_wsol": "jaxmilab.models.wsol_backbones:create_resnet50",
    "vgg16_wsol": "jaxmilab.models.wsol_backbones:create_vgg16",
    # CDSP (scribble-supervised segmentation), MACL (medical segmentation).
    "deeplab": "jaxmilab.models.deeplab",
    "pcl_unet": "jaxmilab.models.pcl_unet",
}

METHODS: dict[str, str] = {
    "dcpt": "jaxmilab.methods.dcpt",
    "maskdcpt": "jaxmilab.methods.maskdcpt",
    "restoration": "jaxmilab.methods.restoration",
    "opd": "jaxmilab.methods.opd",
    "cam": "jaxmilab.methods.cam",
    "bcam": "jaxmilab.methods.bcam",
    "bagcams": "jaxmilab.methods.bagcams",
    "cdsp": "jaxmilab.methods.cdsp",
    "macl": "jaxmilab.methods.macl",
    "macl_finetune": "jaxmilab.methods.macl_finetune",
}

DATA: dict[str, str] = {
    # Restoration.
    "degraded_photos": "jaxmilab.data.degraded_photos",
    "paired_folders": "jaxmilab.data.paired_folders",
    "array_records": "jaxmilab.data.array_records",
    "uir2p5m": "jaxmilab.data.uir2p5m",
    # OPD.
    "multiframe": "jaxmilab.data.multiframe",
    # WSOL.
    "wsol_synthetic": "jaxmilab.data.wsol_synthetic",
    "wsol_folders": "jaxmilab.data.wsol_folders",
    "wsol_tfds": "jaxmilab.data.wsol_tfds",
    # CDSP.
    "scribble_synthetic": "jaxmilab.data.scribble_synthetic",
    "scribble_folders": "jaxmilab.data.scribble_folders",
    "scribble_tfds": "jaxmilab.data.scribble_tfds",
    # MACL.
    "medical_pretrain": "jaxmilab.data.medical_pretrain",
    "medical_seg": "jaxmilab.data.medical_seg",
}

TABLES: dict[str, dict[str, str]] = {"models": MODELS, "methods": METHODS, "data": DATA}
ENTRY_POINTS = {"models": "create", "methods": "Method", "data": "create"}
_WHAT = {"models": "model", "methods": "method", "data": "dataset"}


def _table(kind: str) -> dict[str, str]:
  if kind not in TABLES:
    raise ValueError(f"Unknown registry kind {kind!r}; expected one of {sorted(TABLES)}.")
  return TABLES[kind]


def available(kind: str) -> list[str]:
  """The names `kind` ("models", "methods" or "data") accepts, sorted."""
  return sorted(_table(kind))


def _split(kind: str, name: str) -> tuple[str, str]:
  """(module name, entry point name) of `name`; ValueError listing the names if unknown."""
  table = _table(kind)
  if name not in table:
    raise ValueError(f"Unknown {_WHAT[kind]} {name!r}. Available: {', '.join(available(kind))}.")
  module_name, _, entry = table[name].partition(":")
  return module_name, entry or ENTRY_POINTS[kind]


def module_name(kind: str, name: str) -> str:
  """The dotted name of the module that `name` selects for `kind` (without importing it)."""
  return _split(kind, name)[0]


def module(kind: str, name: str) -> types.ModuleType:
  """The module that `name` selects for `kind`; ValueError listing the names if unknown."""
  return importlib.import_module(_split(kind, name)[0])


def _entry(kind: str, name: str) -> Any:
  module_name_, entry_name = _split(kind, name)
  entry = getattr(importlib.import_module(module_name_), entry_name, None)
  if entry is None:
    raise ValueError(f"{module_name_} (the {_WHAT[kind]} {name!r}) defines no `{entry_name}`.")
  return entry


def get_method(name: str):
  """The `Method` class of the method `name` (jaxmilab.methods.base.Method subclass)."""
  return _entry("methods", name)


def get_model(name: str):
  """`create(config.model) -> nn.Module` of the model `name` (or its "module:function")."""
  return _entry("models", name)


def get_data(name: str):
  """`create(config, *, batch_size, seed, process_index, process_count) ->
  jaxmilab.data.base.Datasets` of the dataset `name`."""
  return _entry("data", name)
