"""The store room: tables, the database and repository functions. The only code that
imports SQLAlchemy (besides the migrations). Repository functions take a Session and never
commit; services run them inside one named transaction (``Database.write``/``read``).

``Tx`` is the session a transaction function receives: services name it by this alias, so
only this room imports SQLAlchemy."""

from sqlalchemy.orm import Session as Tx

__all__ = ["Tx"]
