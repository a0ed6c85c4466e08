"""Generated gRPC stubs for recognizer.v1 (made by `make protos`, not committed)."""
