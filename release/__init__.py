"""Release pipeline for the custom transformer: checkpoint -> verified, documented, versioned Hub revision."""

__version__ = "0.1.0"
