"""Datasets: the catalog, the shard format, the sources that feed it, and the Ray Data pipeline."""
