"""The call core, sans-IO: call state, the per-side reorder buffer, the two-side alignment and
block cutting. Events in, aligned audio blocks and the call's record out; no trio, sockets or
files, and no front end or storage import (tests/test_layers.py, docs/architecture.md)."""
