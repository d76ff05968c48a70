"""Persisted pipeline state: checkpoints, table and chunk states, post-data progress."""
