"""Evaluation under strong generalization: ranking metrics, the held-out protocol, baselines."""
