"""bandit-router: a contextual bandit that learns which LLM should answer each query.

Subpackages, lowest first: the core modules here (``errors``, ``features``, ``rewards``,
``settings``, ``progress``), ``policies``, ``store``, ``offline``, ``service``, ``http``, ``sim``
and ``cli``. A module imports only from its own layer or the ones below it.
"""
