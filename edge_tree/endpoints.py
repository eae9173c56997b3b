"""RPC endpoints as the options take them ('HOST:PORT[,HOST:PORT...]'), checked as llama.cpp's
RPC client reads them: pure string work, for the options (core/options.py) and the RPC backend
(llamacpp/rpc.py) alike."""

from __future__ import annotations

MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS


def parse_endpoints(text: str) -> tuple[str, ...]:
    """'HOST:PORT[,HOST:PORT...]' -> the endpoints; ValueError saying what is wrong."""
    endpoints = tuple(part.strip() for part in text.split(","))
    for endpoint in endpoints:
        split_endpoint(endpoint)
    if len(set(endpoints)) < len(endpoints):
        raise ValueError(f"an endpoint is listed twice in {text!r}")
    if len(endpoints) > MAX_SERVERS:
        raise ValueError(f"at most {MAX_SERVERS} RPC hosts, got {len(endpoints)}")
    return endpoints


def endpoints_complaint(text: str) -> str | None:
    """The option check of --rpc and --rpc-draft."""
    try:
        parse_endpoints(text)
    except ValueError as e:
        return str(e)
    return None


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST:PORT as llama.cpp's client reads it: an IPv4 address or a name, then a port."""
    host, colon, port = endpoint.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT with a port in 1..65535, got {endpoint!r}")
    if ":" in host or "[" in host:
        raise ValueError(f"llama.cpp's RPC client takes IPv4 addresses and host names only, got {endpoint!r}")
    if any(c.isspace() for c in host):
        raise ValueError(f"a host name has no spaces, got {endpoint!r}")
    return host, int(port)
