"""Measurements that write files: ``bench.speed`` (FP vs INT8 latency per backend) and ``bench.quality``."""
