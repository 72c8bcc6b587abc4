"""Credits: `ledger` is where money moves."""

MAX_BALANCE = 2**63 - 1
"""The most credits an account may hold, and so grant or charge at once: balances
and ledger amounts are 64-bit signed integers in every database."""
