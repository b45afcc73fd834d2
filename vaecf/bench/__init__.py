"""Benchmarks of every stage against this machine's own ceilings (called by ``vaecf bench``)."""
