"""The trio server that wires the layers: listeners' admission and auth, one recorder per call,
worker processes, the health and metrics endpoint, and the process's limits."""
