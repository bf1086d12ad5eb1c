"""TLS for the wire endpoint: the shared helpers of :mod:`gateway.tls`."""

from gateway.tls import ensure_self_signed, server_context

__all__ = ["ensure_self_signed", "server_context"]
