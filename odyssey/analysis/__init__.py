"""Analysis of a study's trial store: statistics, fANOVA, figures, report (no JAX needed)."""
