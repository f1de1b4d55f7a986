"""Open real-time multi-camera body capture: the library (transport, geometry, body models, fitting)."""
