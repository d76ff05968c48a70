"""Source side: catalog discovery, replication sessions (slots, exported snapshots, publications)."""
