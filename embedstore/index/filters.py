"""`--where`: a DuckDB expression over the catalog table of the searched items, turned into allowed rows.

Why it is safe to take from a user: DuckDB's own parser must read the text as exactly one expression
(a second statement, `;`, DDL or DML is refused before anything runs); the expression is applied
through the relational API, never pasted into SQL text; and search opens the store read-only.
"""
from __future__ import annotations

import duckdb
import numpy as np

from embedstore.errors import BadInput
from embedstore.store import Store

TABLES = {"videos": ("videos", "video_id"), "reports": ("reports", "report_id")}


def parse_where(where: str) -> duckdb.Expression:
    """The expression, or BadInput when the text is empty or not a single SQL expression."""
    if not where or not where.strip():
        raise BadInput("--where is empty; give an expression such as \"split = 'TEST' AND ef < 40\"")
    try:
        return duckdb.SQLExpression(where)
    except duckdb.Error as exc:
        raise BadInput(f"--where {where!r} is not a single SQL expression: {first_line(exc)}") from None


def allowed_rows(store: Store, encoder: str, target: str, where: str) -> np.ndarray:
    """Sorted vector rows of (encoder, target) whose catalog row satisfies `where`."""
    expr = parse_where(where)
    table, key = TABLES[target]
    column, const = duckdb.ColumnExpression, duckdb.ConstantExpression
    with store.catalog.con.cursor() as con:  # a cursor of its own: the catalog may hold an unfinished result
        try:
            items = con.table(table).filter(expr).select(key)
            embedded = con.table("embeddings").filter((column("encoder") == const(encoder)) & (column("target") == const(target)))
            rows = embedded.join(items, column("item_id") == column(key), how="semi").select('"row"').fetchnumpy()["row"]
        except duckdb.Error as exc:
            columns = ", ".join(r[0] for r in con.execute(f"DESCRIBE {table}").fetchall())
            raise BadInput(f"--where {where!r}: {first_line(exc)} (columns of {table}: {columns})") from None
    return np.sort(np.asarray(rows, dtype=np.int64))


def matching_ids(store: Store, target: str, where: str) -> list[str]:
    """Ids of the `target` catalog rows that satisfy `where`, embedded or not (erasure by --where)."""
    table, key = TABLES[target]
    with store.catalog.con.cursor() as con:
        try:
            found = con.table(table).filter(parse_where(where)).select(key).fetchall()
        except duckdb.Error as exc:
            raise BadInput(f"--where {where!r}: {first_line(exc)}") from None
    return sorted(r[0] for r in found)


def first_line(exc: Exception) -> str:
    """DuckDB's message without its class prefix, candidate lists and FROM-clause jargon."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for prefix in ("Parser Error: ", "Binder Error: ", "Conversion Error: ", "Catalog Error: "):
        line = line.removeprefix(prefix)
    return line.replace(" in FROM clause!", "")
