"""The embedded demo: sample data, demo identity provider, and the one-command portal."""
