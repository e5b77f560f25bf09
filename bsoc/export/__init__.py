"""Export of a SOC network for deployment: ONNX graphs and a dependency-free C99 library.

Importing this package imports torch (through the model); the CLI imports it lazily.
"""
