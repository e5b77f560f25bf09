"""Compression of the SOC network: neuron PCA, projection with goals, SVD baseline, unpacking.

Importing this package imports torch; the CLI imports it lazily.
"""
