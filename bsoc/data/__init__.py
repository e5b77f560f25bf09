"""Data: the canonical schema, datasets on disk, readers, simulation, windows."""
