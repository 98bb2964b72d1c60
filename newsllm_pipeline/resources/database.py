"""The noticias database: a SQLAlchemy URL (PostgreSQL for sites, SQLite by default)."""

import datetime as dt

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from .. import db


class NoticiasDatabase(dg.ConfigurableResource):
    """Where the `noticias` table lives, and the rules for claiming its rows."""

    url: str = Field(description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pass@host/db")
    max_attempts: int = Field(
        default=3, description="An item that failed this many times is not claimed again until reset."
    )
    claim_lease_minutes: int = Field(
        default=30, description="A claim older than this (its run died) lets another run take the rows."
    )

    _engine: Engine | None = PrivateAttr(default=None)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.create_db_engine(self.url)
        return self._engine

    @property
    def lease(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.claim_lease_minutes)

    def teardown_after_execution(self, context) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def upgrade(self) -> list[str]:
        return db.upgrade(self.engine)

    def count_claimable(self) -> int:
        return db.count_claimable(self.engine, self.max_attempts, self.lease)

    def claim_batch(self, claimant: str, size: int) -> list[db.ClaimedItem]:
        return db.claim_batch(self.engine, claimant, size, self.max_attempts, self.lease)

    def status(self) -> dict[str, int]:
        return db.status_counts(self.engine, self.max_attempts)
