"""Datasets: collection, Minari-format storage, the flat training cache and the window sampler."""
