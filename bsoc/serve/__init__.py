"""The live SOC service: FastAPI app, per-stream state, micro-batching, snapshots, dashboard.

Build one with :func:`bsoc.serve.app.create_app`; run it with ``bsoc serve``.
"""
