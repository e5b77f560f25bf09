"""Benchmark: accuracy, size and speed of every model, measured side by side in one run."""
