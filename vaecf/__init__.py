"""vaecf: Variational Autoencoders for Collaborative Filtering (Mult-VAE, Liang et al. 2018).

Stages talk through files on disk: ``prepare`` writes a dataset directory, ``train`` a run
directory, and ``test`` / ``recommend`` / ``bench`` / ``export`` read a run directory.
Importing this package is cheap: TensorFlow and GPU libraries load only where used.
"""

__version__ = "0.1.0"
