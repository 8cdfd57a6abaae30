"""Benchmarks that drive a running omni_server from the outside (`make bench`)."""
