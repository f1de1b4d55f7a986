"""Node kinds: one module per node, thin wiring of library pieces to sockets."""
