"""Compressor libraries for the compressor filter (`envoy.compression.*.compressor`)."""
