"""PostgreSQL's hot reads: one pool however many first reads race, and a
connection lost under it (a restart, an idle-connection killer) is replaced."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import bindparam, select

from imagine.accounts import service as accounts
from imagine.db.database import Database
from imagine.db.models import Account

ACCOUNT = select(Account.id, Account.balance, Account.created_at).where(
    Account.id == bindparam("account_id")
)
pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


async def backends(database_url: str) -> int:
    """Connections to this test's database other than the one counting."""
    counter = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        count = await counter.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await counter.close()
    return int(count)


def test_racing_first_reads_share_one_pool_and_survive_lost_connections(
    database_url: str,
) -> None:
    async def scenario() -> None:
        db = Database(database_url)
        try:
            async with db.write() as session:
                issued = await accounts.create_account(session, plan="free", credits=120)
            rows = await asyncio.gather(
                *(db.read_one(ACCOUNT, {"account_id": issued.account_id}) for _ in range(100))
            )
            assert all(row is not None and row["balance"] == 120 for row in rows)
            assert rows[0] is not None and rows[0]["created_at"].tzinfo is not None
            # One pool of at most 10, plus the engine's own few connections.
            assert await backends(database_url) <= 10 + 5

            # Kill every other connection to the database, as a restart would.
            killer = await asyncpg.connect(database_url.replace("+asyncpg", ""))
            try:
                await killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await killer.close()
            again = await db.read_one(ACCOUNT, {"account_id": issued.account_id})
            assert again is not None and again["balance"] == 120
            assert await db.read_one(ACCOUNT, {"account_id": "acct_missing"}) is None
        finally:
            await db.dispose()

    asyncio.run(scenario())
