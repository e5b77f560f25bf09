"""Fleet scale: SOC for many cells through a durable log (NATS JetStream).

Cells publish samples to the log; workers own partitions of it, step their streams with the
same registry, micro-batcher and snapshots as ``bsoc serve``, checkpoint each partition
together with the log sequence it has applied, and replay after a failure. The gateway puts
the service's HTTP/WebSocket API in front of the log. See ``docs/fleet.md``.
"""
