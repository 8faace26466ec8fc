"""The archive: every valid envelope, behind one ``Archive`` interface (SQLite default, PostgreSQL fleet)."""
