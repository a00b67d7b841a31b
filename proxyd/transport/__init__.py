"""Transport sockets: what wraps a TCP connection before network filters see it (TLS)."""
