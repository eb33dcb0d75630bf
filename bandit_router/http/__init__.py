"""The HTTP edge: one request contract, the doors that serve it, and the pages."""
