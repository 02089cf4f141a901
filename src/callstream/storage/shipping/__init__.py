"""Shipping finished recordings off the node: object storage and completion events.

Layering: storage. The server hands every finalised recording (complete, incomplete, failed,
recovered) to the `Shipper`, which journals it in a durable spool (`spool.py`), uploads the audio
and sidecar to an S3-compatible store (`store.py`), then announces it with one JSON event
(`event.py`) to a webhook (`webhook.py`) and/or NATS JetStream (`natsbus.py`). Settings and
their command-line flags: `callstream.shipping_settings`.
"""
