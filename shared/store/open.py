"""The one place that chooses the store: Elasticsearch when a URL is configured, else SQLite."""

from __future__ import annotations

from ..config import Settings
from . import Ledger, Store


async def open_stores(settings: Settings) -> tuple[Store, Ledger]:
    """The store and the ledger, ready for use: raises StoreUnavailable (one line, naming the
    URL) when the Elasticsearch server does not answer, so a service fails at start."""
    if settings.elasticsearch_url is None:
        from .sqlite import SQLiteStore
        from .sqlite_ledger import SQLiteLedger

        return SQLiteStore(settings.store_path), SQLiteLedger(settings.store_path)
    from .elasticsearch import ElasticsearchLedger, ElasticsearchStore

    secret = lambda s: None if s is None else s.get_secret_value()  # noqa: E731
    auth = dict(api_key=secret(settings.elasticsearch_api_key), username=settings.elasticsearch_username,
                password=secret(settings.elasticsearch_password), ca_certs=settings.elasticsearch_ca_certs)
    store = ElasticsearchStore(settings.elasticsearch_url, settings.elasticsearch_index, **auth)
    ledger = ElasticsearchLedger(settings.elasticsearch_url, settings.elasticsearch_index, **auth)
    try:
        await store.open()
        await ledger.open()
    except BaseException:
        await store.close()
        await ledger.close()
        raise
    return store, ledger
