"""Request bodies sent compressed (`Content-Encoding: gzip` or `deflate`, as tritonclient's
`request_compression_algorithm` sends them), inflated with a bound: a small body that inflates past the
limit (a zip bomb) is refused once the limit is reached, never inflated whole."""

from __future__ import annotations

import zlib

from modelship.server.errors import RequestError

# zlib's wbits: 16 + 15 reads a gzip member, 15 a zlib stream (what HTTP calls deflate).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ENCODINGS = tuple(_WBITS)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The inflated body; 413 past `limit` bytes, 400 if it is not valid `encoding` data."""
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(400, f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise RequestError(413, f"the body inflates to over {limit} bytes, the limit of this request")
    if not inflater.eof or inflater.unused_data:
        raise RequestError(400, f"the body is not one complete {encoding} stream")
    return data
