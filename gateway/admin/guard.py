"""Wrong admin credentials, counted per client address, so that an admin token cannot
be guessed online.

Each admin credential presented and refused (a Bearer token or JWT on the admin
API, a token sent to the web UI's sign-in) counts against the address it came
from: the peer's IPv4 address, or the /64 network of an IPv6 one (a host is
usually given a whole /64, and would otherwise have endless addresses to try
from). Past `limit` in one window of `window` seconds, that address gets 429 with
`Retry-After` on every admin request that carries a credential, right or wrong,
until the window ends: answering a right one would tell the guesser it is right.
Requests with no credential, and session cookies (random, 256 bits, and stale
after every restart), are not counted.

Each gateway process counts on its own, in a table of at most `max_addresses`
(the least recently failing address is forgotten first), so the bound holds per
process: N replicas let an address try N x `limit` a window.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import Scope

MAX_ADDRESSES = 10_000

logger = logging.getLogger("gateway.admin")


class SignInGuard:
    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0 or max_addresses < 1:
            raise ValueError("limit, window and max_addresses must be positive")
        self.limit = limit
        self.window_s = window_s
        self._max = max_addresses
        self._clock = clock
        # address -> (the start of its window, the failures in it)
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, scope: Scope) -> int | None:
        """Whole seconds until the client of SCOPE may present a credential again;
        None when it may now."""
        address = client_address(scope)
        entry = self._failures.get(address)
        if entry is None:
            return None
        left = entry[0] + self.window_s - self._clock()
        if left <= 0:
            del self._failures[address]
            return None
        return math.ceil(left) if entry[1] >= self.limit else None

    def failed(self, scope: Scope) -> None:
        """The client of SCOPE presented a wrong admin credential."""
        address = client_address(scope)
        now = self._clock()
        start, count = self._failures.pop(address, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        self._failures[address] = (start, count + 1)
        if count + 1 == self.limit:
            logger.warning(
                "admin credentials from %s refused for %.0f s: %d wrong ones within %.0f s",
                address,
                start + self.window_s - now,
                self.limit,
                now - start,
            )
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


def client_address(scope: Scope) -> str:
    """The address failures count against: the peer's IPv4 address, its IPv6 /64, or
    "local" for a peer with no address (a Unix socket)."""
    client = scope.get("client")
    if not client:
        return "local"
    host = str(client[0])
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(parsed, ipaddress.IPv6Address):
        mapped = parsed.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)
