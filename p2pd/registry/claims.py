"""How many new names one client address may claim: ``claims-per-address-per-hour`` (issue 12, item 8).

A key owns at most ``names-per-key`` names, but keys cost nothing to make; addresses cost more. So new claims
are counted per observed client address in a token bucket that refills the hour's allowance over the hour (a
burst of the whole allowance, then one claim every 3600/N seconds), answered 429 ``too_many_claims`` with
Retry-After past it. An IPv6 client counts by its /64, the block one machine usually gets. Updating a name one
owns never counts. The buckets live in the registry process (several registries on one Redis count apart).
"""

import ipaddress

from p2pd.core.ratelimit import RateLimiter
from p2pd.errors import TooManyClaims


def address_group(host: str) -> str:
    """The unit an address is counted by: an IPv4 address itself, an IPv6 address's /64 network."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # "local" (a unix socket)
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class ClaimQuota:
    def __init__(self, per_hour: int):
        self.per_hour = per_hour
        self.buckets = RateLimiter(per_hour / 3600.0, per_hour)

    def admit(self, host: str, now: float):
        """Count one new claim from *host*; TooManyClaims (with the wait) when its hour's allowance is spent."""
        wait = self.buckets.check(address_group(host), now)
        if wait:
            raise TooManyClaims("your address claimed %d new names within the hour already, as many as the registry "
                                "takes from one address; retry in %d s" % (self.per_hour, wait), retry_after=wait)
