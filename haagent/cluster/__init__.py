"""The cluster as etcd holds it: the public key schema and one immutable view of it (pure)."""
