"""The agent: a pure core (``core``) and the loop wiring it to etcd and the kernel (``loop``)."""
