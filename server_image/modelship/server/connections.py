"""When a keep-alive connection has served long enough and its client is asked to reconnect.

A Kubernetes Service balances connections, not requests: kube-proxy picks a pod when a connection
opens, and every request on it goes to that pod for as long as the client keeps it. Clients that pool
connections (wrk, requests.Session, httpx, Go's http.Client, tritonclient) keep them for good, so a pod
added later, a canary or one the autoscaler adds, gets no traffic from the clients already connected.
The remedy proxies and RPC servers use is to bound each connection: nginx's `keepalive_requests`,
Envoy's `max_connection_duration`, gRPC's `MAX_CONNECTION_AGE`. Once a connection has answered so many
requests, or is so old, the response to its next request carries `Connection: close`; the client reads
it, opens a new connection, and the Service places that one afresh. Nothing is reset and no request is
lost: the client learns of the close from the response itself, never by finding a dead socket.

Each connection draws its own limits, uniformly between half the configured value and the value, so
that connections opened together (a load generator starting, every client reconnecting after a
rollout) do not all reconnect at once again and again.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConnectionBudget:
    """What one connection may do: up to `requests` requests, until `closes_at` (monotonic time)."""

    requests: float = math.inf  # a float so that "no limit" is one comparison, as the age's is
    closes_at: float = math.inf

    def spent(self, requests: int, now: float) -> bool:
        """Whether the response to the `requests`-th request, begun at `now`, is the connection's last."""
        return requests >= self.requests or now >= self.closes_at


@dataclass(frozen=True)
class ConnectionPolicy:
    """The configured limits (0: none) and the random source each connection draws its budget from."""

    max_requests: int
    max_age_seconds: float
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def draw(self, opened_at: float) -> ConnectionBudget:
        """The budget of a connection opened at `opened_at`: each limit uniform in [limit/2, limit]."""
        requests = math.inf
        if self.max_requests > 0:
            requests = self.rng.randint((self.max_requests + 1) // 2, self.max_requests)
        closes_at = math.inf
        if self.max_age_seconds > 0:
            closes_at = opened_at + self.rng.uniform(self.max_age_seconds / 2, self.max_age_seconds)
        return ConnectionBudget(requests, closes_at)
