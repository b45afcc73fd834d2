"""The training stage: the loop, its progress view, data-parallel communication and launch."""
