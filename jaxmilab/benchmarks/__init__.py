"""`python -m jaxmilab.benchmarks.<name>`: printed tables, ratios against a same-run baseline."""
