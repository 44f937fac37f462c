"""Fast failover's liveness layer: heartbeats between agents (docs/safety.md)."""
