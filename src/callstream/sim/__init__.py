"""The platform's side, for tests, benchmarks and operators: the call simulator, the load
generator, their WebSocket client and the verifier of what was recorded."""
