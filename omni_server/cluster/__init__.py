"""Cluster mode: engines as Ray Serve replicas behind a light gateway (docs/cluster.md).

Imported only when `--cluster` is given: the single-process server never imports Ray.
"""
