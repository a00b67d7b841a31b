"""xDS client: the sans-IO protocol state (state.py), the agent process that owns every
gRPC channel (agent.py), watched files (file_source.py). The master side that turns
accepted resources into worker snapshots is proxyd/master/dynamic.py."""
