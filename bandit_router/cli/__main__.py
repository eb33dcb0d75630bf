"""``python -m bandit_router.cli``: the same as the ``bandit-router`` command."""

from bandit_router.cli.main import main

raise SystemExit(main())
