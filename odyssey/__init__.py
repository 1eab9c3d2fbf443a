"""odyssey: the LSTM variants of Greff et al. (2017) as a vmapped random-search study in JAX."""

__version__ = "0.1.0"
