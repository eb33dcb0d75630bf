"""Everything that must outlive a process, in Redis."""
