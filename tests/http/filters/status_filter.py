"""A test HTTP filter that exercises every part of the filter contract, chosen per
request by the `x-mode` header (comma-separated):

  pause          decode_headers STOP_ITERATION, resumed from a timer
  stop-all       decode_headers STOP_ALL_ITERATION_AND_BUFFER, resumed from a timer
  buffer         decode_data STOP_ITERATION_AND_BUFFER until the end, then the whole body
                 is upper-cased in the decoding buffer
  no-buffer      decode_data STOP_ITERATION_NO_BUFFER: the body is replaced by "dropped"
  trailers-stop  decode_trailers STOP_ITERATION, resumed from a timer
  encode-pause   encode_headers STOP_ITERATION, resumed from a timer
  encode-buffer  encode_data STOP_ITERATION_AND_BUFFER, then the body is reversed
  encode-reply   encode_headers answers 418 itself (a local reply from the encoder side)
  reply          decode_headers answers 403 itself (through the encoder side)
  raise          decode_headers raises
  raise-encode   encode_headers raises
  reroute        rewrites :path to /rerouted and clears the route cache

Every response gets `x-status-filter: <greeting>` from the encoder side, where the
greeting is the most specific per-route config's, else the filter config's. A path
under /unrouted (no route matches it) is answered by the filter with 200.
"""
import gevent

from proxyd.http.filter import FilterDataStatus as D
from proxyd.http.filter import FilterHeadersStatus as H
from proxyd.http.filter import FilterTrailersStatus as T
from proxyd.http.filter import StreamFilter

DELAY = 0.05


class StatusFilter(StreamFilter):
    counters = ("requests", "paused", "buffered", "encoder_replies")

    @classmethod
    def parse_config(cls, config):
        if not isinstance(config.get("greeting", ""), str):
            raise ValueError("greeting must be a string")
        return config

    @classmethod
    def parse_route_config(cls, config):
        return config

    def __init__(self, config):
        self.config = config
        self.modes = set()
        self.timers = []
        self.paused = None   # "decode" / "encode" while a timer is to resume that side

    def _later(self, side, resume):
        """Resume `side` from a loop timer (the hub, not the stream's greenlet)."""
        self.paused = side

        def fire():
            self.paused = None
            resume()
        t = gevent.get_hub().loop.timer(DELAY)
        t.start(fire)
        self.timers.append(t)

    # -- request ---------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream):
        cb = self.decoder_callbacks
        cb.stats.requests.inc()
        self.modes = set((headers.get("x-mode") or "").split(","))
        modes = self.modes
        cb.stream_info.set_dynamic_metadata("status_filter", {"modes": headers.get("x-mode") or ""})
        cb.stream_info.filter_state["status_filter.route"] = (
            cb.route().name if cb.route() is not None else "none")
        if "raise" in modes:
            raise RuntimeError("status filter was told to raise")
        if "reply" in modes:
            cb.send_local_reply(403, "denied by the status filter", "status_filter_denied")
            return H.STOP_ITERATION
        if headers.get(":path").startswith("/unrouted"):
            cb.send_local_reply(200, "answered without a route", "status_filter_unrouted")
            return H.STOP_ITERATION
        if "no-buffer" in modes:
            headers.remove("content-length")   # the body changes length
        if "reroute" in modes:
            headers.set(":path", "/rerouted")
            cb.clear_route_cache()
        if "pause" in modes:
            cb.stats.paused.inc()
            self._later("decode", cb.continue_decoding)
            return H.STOP_ITERATION
        if "stop-all" in modes:
            cb.stats.paused.inc()
            self._later("decode", cb.continue_decoding)
            return H.STOP_ALL_ITERATION_AND_BUFFER
        return H.CONTINUE

    def decode_data(self, data, end_stream):
        cb = self.decoder_callbacks
        if self.paused == "decode":
            return D.STOP_ITERATION_AND_BUFFER  # a Continue here would resume the headers
        if "buffer" in self.modes:
            if not end_stream:
                return D.STOP_ITERATION_AND_BUFFER
            cb.stats.buffered.inc()
            cb.add_decoded_data(data)        # the last chunk joins the buffer
            cb.modify_decoding_buffer(lambda b: b.__setitem__(slice(None), b.upper()))
            return D.CONTINUE
        if "no-buffer" in self.modes:
            if end_stream:
                data[:] = b"dropped"
                return D.CONTINUE
            return D.STOP_ITERATION_NO_BUFFER
        return D.CONTINUE

    def decode_trailers(self, trailers):
        if "trailers-stop" in self.modes:
            self._later("decode", self.decoder_callbacks.continue_decoding)
            return T.STOP_ITERATION
        return T.CONTINUE

    # -- response --------------------------------------------------------------------------

    def _greeting(self, cb):
        cfg = cb.per_route_config()
        return (cfg or self.config).get("greeting", "hello")

    def encode_headers(self, headers, end_stream):
        cb = self.encoder_callbacks
        headers.set("x-status-filter", self._greeting(cb))
        levels = cb.per_route_configs()
        if levels:
            headers.set("x-status-levels", str(len(levels)))
        if "raise-encode" in self.modes:
            raise RuntimeError("status filter was told to raise while encoding")
        if "encode-reply" in self.modes and headers.get(":status") == "200":
            cb.stats.encoder_replies.inc()
            cb.send_local_reply(418, "teapot from the encoder", "status_filter_teapot")
            return H.STOP_ITERATION
        if "encode-buffer" in self.modes:
            headers.remove("content-length")
            return H.STOP_ITERATION
        if "encode-pause" in self.modes:
            self._later("encode", cb.continue_encoding)
            return H.STOP_ITERATION
        return H.CONTINUE

    def encode_data(self, data, end_stream):
        if self.paused == "encode":
            return D.STOP_ITERATION_AND_BUFFER
        if "encode-buffer" in self.modes:
            if not end_stream:
                return D.STOP_ITERATION_AND_BUFFER
            cb = self.encoder_callbacks
            cb.add_encoded_data(data)
            cb.modify_encoding_buffer(lambda b: b.reverse())
            return D.CONTINUE
        return D.CONTINUE

    def on_destroy(self):
        for t in self.timers:
            t.close()
