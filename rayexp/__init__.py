"""rayexp: which pretrained backbone should I fine-tune on my small, domain-specific dataset?

The library behind the sweeps: a backbone registry, a Parquet shard format for datasets, a plain
PyTorch training loop, and thin Ray Tune / Ray Train / MLflow edges (``orchestrate``, ``tracking``).
"""

__version__ = "0.1.0"
