"""Policies: the protocol every policy implements, each kind, and the registry."""
