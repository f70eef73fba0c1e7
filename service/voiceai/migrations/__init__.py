"""Alembic migrations of the call records' schema, run by `voiceai.store` at every start.

A schema change is a new file in `versions/` whose `down_revision` is the newest one's id: write
it by hand, or draft it against a database at the newest revision with the command in
`alembic.ini`, then check it on SQLite and PostgreSQL (tests/test_store.py).
"""
