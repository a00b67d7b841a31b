"""Listener filters: run after accept, before a filter chain is chosen."""
