"""The model and its files: the Mult-VAE network, sparse input batches, the run directory."""
