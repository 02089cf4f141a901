"""The call core, sans-IO and protocol-neutral: one `CallCore` per call of either front end (call
state, endings, limits, the record) and its two placement engines: the `Timeline` (two sides:
the per-side reorder buffer, the two-side alignment, block cutting) and the `SegmentMixer`
(participants' segments placed in time and mixed). Events in, blocks of audio and the call's
record out; no trio, grpc, sockets or files, and no front end or storage import
(tests/test_layers.py, docs/architecture.md)."""
