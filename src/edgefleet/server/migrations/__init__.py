"""Alembic migrations of the control-plane database (run by ``Database.upgrade`` on server start)."""
