"""Batch inference at scale: the same `parvis predict` job on Ray Data or torchrun (see shards.py)."""
