"""The Engage Voice front end: the WebSocket upgrade and its query, the JSON messages (parse, fast
scan, encode), the frame split and the transport adapters. It turns wire messages into call
events for `callstream.call`; it imports neither storage nor the server (docs/architecture.md)."""
