"""Orchestration: clone (schema, snapshot, parallel copy), verification, and later streaming."""
