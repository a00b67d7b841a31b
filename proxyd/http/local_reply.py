"""Envoy's local replies: the statuses, bodies, details and response flags it uses when
proxyd answers a request itself."""
from __future__ import annotations

UPSTREAM_RESET = "upstream connect error or disconnect/reset before headers. reset reason: "

# name -> (status, body, response_code_details, response_flag)
NO_ROUTE = (404, b"", "route_not_found", "NR")
NO_CLUSTER = (503, b"", "cluster_not_found", "NC")
NO_HEALTHY_UPSTREAM = (503, b"no healthy upstream", "no_healthy_upstream", "UH")
ROUTE_TIMEOUT = (504, b"upstream request timeout", "response_timeout", "UT")
PER_TRY_TIMEOUT = (504, b"upstream request timeout", "upstream_per_try_timeout", "UT")

def upstream_max_duration(request_complete: bool):
    """The cluster's max_stream_duration ended the upstream request (Envoy 1.40)."""
    return (504 if request_complete else 408, b"upstream max stream duration reached",
            "upstream_max_stream_duration_reached", "UMSDR")


# proxyd's connect-failure reason -> (Envoy's reset reason, its transport failure reason),
# as Envoy 1.40 words them for a refused connect.
_CONNECT_RESET = {"connection refused": ("remote connection failure",
                                         "delayed connect error: Connection refused"),
                  "connection failure": ("remote connection failure", None)}


def connect_failure(reason: str):
    """The body names Envoy's reset reason; the details add the transport failure
    reason after a '|', spaces as underscores (Envoy 1.40)."""
    reset, transport = _CONNECT_RESET.get(reason, (reason, None))
    details = reset if transport is None else reset + "|" + transport
    return (503, (UPSTREAM_RESET + reset).encode(),
            "upstream_reset_before_response_started{%s}" % details.replace(" ", "_"), "UF")


# a circuit breaker refused (Envoy adds x-envoy-overloaded: true)
OVERFLOW = (503, (UPSTREAM_RESET + "overflow").encode(),
            "upstream_reset_before_response_started{overflow}", "UO", [("x-envoy-overloaded", "true")])


def upstream_reset():
    return (503, (UPSTREAM_RESET + "connection termination").encode(),
            "upstream_reset_before_response_started{connection_termination}", "UC")


def upstream_protocol_error():
    return (502, (UPSTREAM_RESET + "protocol error").encode(),
            "upstream_reset_before_response_started{protocol_error}", "UPE")


CODEC_BODIES = {400: b"Bad Request", 403: b"Forbidden", 431: b"Request Header Fields Too Large",
                501: b"Not Implemented"}
