"""recognizer: licence plates, faces and their fusion, served over gRPC."""

__version__ = "0.1.0"
