"""The store: the only package that talks to etcd (client, lease keepalive, prefix watch)."""

from haagent.store.client import Store
from haagent.store.errors import ETCD_ERRORS, STORE_ERRORS, StoreError, describe_error
from haagent.store.keeper import LeaseKeeper

__all__ = ["ETCD_ERRORS", "STORE_ERRORS", "LeaseKeeper", "Store", "StoreError", "describe_error"]
