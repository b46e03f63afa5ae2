"""Input pipelines (grain), degradation synthesis, datasets by name (see base.py)."""
