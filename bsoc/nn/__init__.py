"""The SOC network: weight maps and layers, the Table-1 network, its streaming estimator.

Importing this package imports torch; the CLI and the estimator registry import it lazily.
"""
