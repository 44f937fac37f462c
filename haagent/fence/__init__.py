"""The fence: a separate process that removes the agent's VIPs when the agent cannot.

``client`` is the agent's end, ``program`` the process itself, ``state`` its pure decisions,
``setup`` the etcd settings it gets over the pipe. ``netlink`` (address removal), ``etcd``
(the lease revoke) and ``rpc`` (the little of HTTP/2 and gRPC that takes) keep the process
free of pyroute2 and grpcio.
"""
