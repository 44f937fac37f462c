"""The mark haagent sets on every address it binds, so that it removes only what it bound.

An address is haagent's when it has the exact address and prefix length of a configured VIP
*and* carries :data:`PROTO` in its ``IFA_PROTO`` attribute ("who added this address", Linux 6.1
and newer; ``ip address`` prints it as ``proto 0x68``, or by name with the ``rt_addrprotos``
entry that docs/net.md gives). The host's own addresses, DHCP's and the kernel's carry another
protocol (0 by default), so a VIP configured by mistake to equal one of them is never
removed: not by the agent, the fence, nor ``haagent cleanup``.

On a kernel without ``IFA_PROTO`` the attribute is silently dropped, nothing can be marked, and
only the exact address and prefix count (docs/net.md, "Which addresses are haagent's").
Standard library only: the fence imports this too.
"""

from __future__ import annotations

import os
import re

IFA_PROTO = 11  # linux/if_addr.h
PROTO = 0x68  # 'h'; 0-3 are the kernel's own (unspec, loopback, router advertisement, link-local)
PROTO_NAME = "haagent"
MIN_KERNEL = (6, 1)  # IFA_PROTO for IPv4 and IPv6


def kernel_marks(release: str | None = None) -> bool:
    """True if this kernel keeps ``IFA_PROTO`` (``release`` as ``uname -r`` prints it)."""
    text = os.uname().release if release is None else release
    m = re.match(r"(\d+)\.(\d+)", text)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= MIN_KERNEL


def owned(prefixlen: int, proto: int, want_prefixlen: int, *, marks: bool) -> bool:
    """Is an address entry with ``prefixlen`` and ``proto`` haagent's, for a VIP bound with
    ``want_prefixlen``? Without marks (an old kernel) the exact prefix is all there is."""
    return prefixlen == want_prefixlen and (proto == PROTO or not marks)
