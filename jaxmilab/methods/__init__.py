"""Training recipes. `jaxmilab/methods/<name>.py` defines a `Method` (see base.py)."""
