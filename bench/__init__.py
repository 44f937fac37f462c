"""haagent vs keepalived: the failover benchmark behind `make bench` (see docs/benchmarks.md)."""
