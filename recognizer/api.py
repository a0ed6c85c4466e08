"""Wire-level names the client and the server share, with no imports behind them."""

API_KEY_HEADER = "x-api-key"  # gRPC metadata key that carries the caller's API key
DEFAULT_TARGET = "127.0.0.1:50051"
