"""Schema copy: ``pg_dump`` pre-data before the rows, post-data (indexes, constraints) after."""
