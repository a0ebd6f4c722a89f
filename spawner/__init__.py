"""Spawners for PaNOSC Portal: options, mount planning, and the local/docker/kube backends."""
