"""``make bench``: the service measured side by side with its references (see BENCHMARKS.md)."""
