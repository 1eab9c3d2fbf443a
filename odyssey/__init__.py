"""odyssey: the LSTM variants of Greff et al. (2017) as a vmapped random-search study in JAX.

Submodules are imported on demand (`from odyssey import cells, nets, train`); importing the package runs
nothing and loads no JAX.
"""

__version__ = "0.1.0"

__all__ = ["analysis", "cells", "checkpoints", "ctc", "data", "fast_lstm", "group", "layout", "losses", "metrics",
           "nets", "optim", "pallas_loops", "programs", "progress", "search", "store", "study_config", "tasks",
           "train"]
