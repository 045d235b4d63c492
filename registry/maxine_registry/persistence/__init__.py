"""
Persistence: the registry's state kept in a file, or shared through Redis by several replicas.

``state`` says what is kept (keyed entries of a few kinds) and how changes are learnt and applied;
``store`` writes marked changes in groups and lets writers wait until theirs are durable;
``file_store`` keeps a snapshot and a journal on local disk; ``redis_store`` keeps the state in
Redis, where every replica follows a stream of changes. ``open_store`` builds the store the
settings ask for; the HTTP feature (``maxine_registry.http.persistence``) opens and closes it.
"""

from __future__ import annotations

from maxine_registry.persistence.file_store import FileStore, PersistenceFileError, resolve_path
from maxine_registry.persistence.state import ChangeTracker, StateModel
from maxine_registry.persistence.store import PersistenceStartError, PersistenceUnavailable, Store

__all__ = [
    "ChangeTracker",
    "FileStore",
    "PersistenceFileError",
    "PersistenceStartError",
    "PersistenceUnavailable",
    "StateModel",
    "Store",
    "resolve_path",
]
