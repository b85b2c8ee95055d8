"""The store room: SQLAlchemy tables, repositories and the services that own transactions.
The only code that writes SQL."""
