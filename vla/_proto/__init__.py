"""Generated protobuf/gRPC stubs (see vla.serving.protos_build); excluded from ruff."""
