"""Distributed tracing: B3 propagation (b3.py) and the
Zipkin tracer (zipkin.py, `build_tracer(hcm.tracing, ctx)`)."""
