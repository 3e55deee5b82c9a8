"""Small shared helpers: atomic file writes, JSON lines, locks, shards, logging."""
