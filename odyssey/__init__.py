"""odyssey: the LSTM variants of Greff et al. (2017) as a vmapped random-search study in JAX.

Submodules are imported on demand (`from odyssey import cells, nets, train`); importing the package runs
nothing and loads no JAX.
"""

__version__ = "0.1.0"

__all__ = ["analysis", "cells", "ctc", "data", "group", "layout", "losses", "metrics", "nets", "optim", "programs",
           "progress", "search", "store", "tasks", "train"]
