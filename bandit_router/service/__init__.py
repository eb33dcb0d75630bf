"""The online service: the router's loop, the learner, metrics and statistics."""
