"""FastAPI apps, one per HTTP function, and what they share (errors, dependencies)."""
