from h2_helpers import grpc_server  # noqa: F401  (the fixture, for this folder's tests)
