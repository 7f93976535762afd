"""Certbus services: each its own process, its own Postgres schema; they share only events."""
