"""Failed attempts per client address, in a table of fixed size.

Guessing agent tokens costs an attacker one request per guess; after `limit` failures
from one address within `window` seconds that address is turned away, without
checking what it sends, until its window ends. The table holds at most `size`
addresses (the least recently failing one is forgotten first), so a flood of
addresses costs bounded memory. IPv6 clients are counted per /64: one host usually
owns a whole /64 and could otherwise step through it.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_SIZE = 4096


@functools.lru_cache(maxsize=DEFAULT_SIZE)
def client_key(address: str) -> str:
    """The unit failures are counted in: the address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureTable:
    """Counts failures per client in fixed windows; `blocked` says for how long a
    client must wait. `limit` 0 turns counting off."""

    def __init__(self, limit: int, window: float, size: int = DEFAULT_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.size, self.clock = limit, window, size, clock
        self._entries: OrderedDict[str, list[float]] = OrderedDict()  # key -> [start, count]

    def blocked(self, address: str) -> int:
        """Whole seconds until `address` may try again; 0 if it may now."""
        if not self.limit or not self._entries:  # the common case: nobody has failed
            return 0
        entry = self._entries.get(client_key(address))
        if entry is None or entry[1] < self.limit:
            return 0
        left = entry[0] + self.window - self.clock()
        return math.ceil(left) if left > 0 else 0

    def fail(self, address: str) -> None:
        if not self.limit:
            return
        key, now = client_key(address), self.clock()
        entry = self._entries.get(key)
        if entry is None or now >= entry[0] + self.window:
            self._entries[key] = [now, 1]
        else:
            entry[1] += 1
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
