"""envoy.filters.http.lua: Envoy's Lua filter API on LuaJIT (the `lupa` binding).

`runtime.py` holds one Lua state per script and worker (Envoy's per-worker state) and the
Lua side of the API (`prelude.py`); `filter.py` drives a script's `envoy_on_request` /
`envoy_on_response` as coroutines on the filter chain.
"""
from .filter import create, create_route_config  # noqa: F401
