"""PaNOSC Portal: the hub side (settings, authenticator, catalogue, pages, CLI, demo)."""

__version__ = "0.1.0"
