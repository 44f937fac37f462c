"""haagent: highly available virtual IPs on plain Linux hosts, coordinated through etcd."""

__version__ = "0.1.0"
