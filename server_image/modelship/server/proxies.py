"""Which HTTP proxy, if any, a download goes through: the environment's, except for local addresses.

A model store outside the cluster may only be reachable through the proxy that HTTP_PROXY, HTTPS_PROXY
or ALL_PROXY names, so those are kept for remote hosts. Local addresses always go direct, whatever the
environment says, so that in-cluster traffic never leaves through a proxy: loopback and `localhost`,
IP literals in private and link-local ranges (the cluster's pod and Service ranges are private),
single-label names (resolved with the pod's search domains), and the cluster's DNS names (`*.svc`,
`*.cluster.local`). NO_PROXY is honoured as curl and Go read it, CIDR blocks included.

Pure functions of a URL and an environment mapping: nothing here looks anything up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

LOCAL_SUFFIXES = (".svc", ".cluster.local", ".localhost")


def _env(environ: Mapping[str, str], name: str) -> str:
    """The variable in lower case, else in upper case (curl's and urllib's precedence); '' if unset."""
    return (environ.get(name) or environ.get(name.upper()) or "").strip()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_local(host: str) -> bool:
    """Whether `host` (a name or an IP literal, without brackets or port) is this machine or the cluster."""
    host = host.lower().rstrip(".")
    ip = _ip(host)
    if ip is not None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback or ip.is_private or ip.is_link_local
    return host == "localhost" or "." not in host or host.endswith(LOCAL_SUFFIXES)


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY's comma-separated entries name `host`: `*`, a domain (and its subdomains, with
    or without a leading dot or `*.`), an IP address, a CIDR block, any of them with `:port`."""
    host = host.lower().rstrip(".")
    ip = _ip(host)
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
                continue
            except ValueError:
                pass
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and (not entry_port.isdigit() or int(entry_port) != port):
            continue
        name = name.strip("[]").removeprefix("*").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy URL a request for `url` goes through, or None for a direct connection."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or is_local(host):
        return None
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    if bypassed(host, port, _env(environ, "no_proxy")):
        return None
    proxy = _env(environ, f"{scheme}_proxy") or _env(environ, "all_proxy")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"
