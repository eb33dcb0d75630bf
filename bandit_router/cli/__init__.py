"""The ``bandit-router`` command line."""
