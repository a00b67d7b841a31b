"""One Lua state per script (LuaJIT through `lupa`, as Envoy runs LuaJIT), made in the
worker that builds the config: Envoy's per-worker Lua state. Lua reaches Python only
through one callable per stream side: no `python` module, no builtins, no attributes of
Python objects."""
from __future__ import annotations

try:
    from lupa import luajit21 as _lua
except ImportError:  # a lupa build without LuaJIT: the same API on Lua 5.1
    from lupa import lua51 as _lua

from .prelude import PRELUDE as _PRELUDE
def _filter(obj, attr, is_setting):
    """Lua gets Python callables only (each stream side's dispatcher): no attributes."""
    raise AttributeError("not accessible from Lua: %r" % (attr,))


class Script:
    """A script's state: its envoy_on_request / envoy_on_response (None when absent)."""

    def __init__(self, code: str, name: str = "inline_code"):
        self.lua = _lua.LuaRuntime(register_eval=False, register_builtins=False,
                                   unpack_returned_tuples=True, attribute_filter=_filter)
        # lupa registers a `python` module even without eval and builtins: take it away
        self.lua.execute("python = nil; package.loaded.python = nil")
        self.lua.execute(_PRELUDE)
        g = self.lua.globals()
        self.run = g["__proxyd_run"]
        try:
            self.lua.execute(code)
        except _lua.LuaError as e:
            raise ValueError("%s: the Lua script does not load: %s" % (name, e)) from None
        self.on_request = g.envoy_on_request
        self.on_response = g.envoy_on_response

    def start(self, fn, handle):
        """A coroutine running `fn(handle)`; `send(None)` runs it to its next yield:
        "body" (it waits for the whole body), "respond" or "done"."""
        return self.run.coroutine(fn, handle)

    def table_from(self, d):
        return self.lua.table_from(d)

    LuaError = _lua.LuaError
