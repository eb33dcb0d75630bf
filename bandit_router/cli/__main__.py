"""``python -m bandit_router.cli``: the same as the ``bandit-router`` command."""

from bandit_router.cli.main import main

# Guarded: a tool that imports every module of the package (pkgutil.walk_packages, pydoc,
# a docs builder) ran the command line and exited with its usage error.
if __name__ == "__main__":
    raise SystemExit(main())
