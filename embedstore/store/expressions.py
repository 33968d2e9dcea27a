"""User expressions: search's `--where` (CLI and REST) and training's `--label`, checked and evaluated here only.

Why it is safe to take them from a hostile caller: DuckDB's own parser reads the text as the WHERE
clause of `SELECT * FROM t WHERE ...` (`json_serialize_sql`), and the parse tree must be exactly that
statement with a WHERE made only of the searched table's allowed columns, literals, operators and an
allow-list of scalar functions. Subqueries, table functions, other tables, aggregates, windows,
parameters and qualified names never reach execution, so a filter can read nothing but the rows it
filters (not `meta`, `runs`, other targets' text, files or settings). The check walks the tree, never
the text with regular expressions. Accepted expressions are applied through the relational API on a
cursor of their own that is interrupted when its time budget passes.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import numpy as np

from embedstore.errors import BadInput
from embedstore.store.catalog import Catalog

# What a filter may name, per table. Source paths and file hashes are not filterable: the REST service
# never shows paths, and a filter on them would spell them out one character at a time.
COLUMNS = {
    "videos": ("video_id", "patient_id", "study_id", "acquired_at", "view", "split", "n_frames", "fps", "height",
               "width", "format", "ef", "esv", "edv", "added_at", "series_id"),
    "reports": ("report_id", "study_id", "video_id", "patient_id", "text"),
    "studies": ("item_id", "study_id", "section", "patient_id", "n_videos"),
}
KEYS = {"videos": "video_id", "reports": "report_id", "studies": "item_id"}
TABLES = {"videos": "videos", "reports": "reports", "studies": "study_sections"}  # target -> catalog table
NODE_CLASSES = frozenset({"COLUMN_REF", "CONSTANT", "COMPARISON", "CONJUNCTION", "OPERATOR", "FUNCTION", "CAST",
                          "TYPE", "CASE", "BETWEEN"})
FUNCTIONS = frozenset({
    # operators DuckDB parses as functions: arithmetic, concatenation, LIKE / ILIKE / GLOB on strings
    "+", "-", "*", "/", "//", "%", "^", "**", "||", "~~", "!~~", "~~*", "!~~*", "~~~", "!~~~",
    # numbers
    "abs", "ceil", "ceiling", "floor", "round", "sqrt", "ln", "log", "log2", "log10", "exp", "pow", "power",
    "sign", "greatest", "least", "isnan", "isinf", "isfinite", "nullif", "ifnull",
    # strings
    "lower", "upper", "lcase", "ucase", "length", "strlen", "substr", "substring", "prefix", "suffix", "starts_with",
    "ends_with", "contains", "trim", "ltrim", "rtrim", "concat", "replace", "left", "right", "strpos", "instr",
    "position", "regexp_matches", "regexp_full_match", "like_escape", "ilike_escape",
    # dates
    "year", "month", "day", "hour", "date_part", "datepart", "date_trunc", "datetrunc", "epoch",
})
MAX_LENGTH = 4000
FILTER_TIMEOUT_S = 10.0  # a filter's DuckDB work past this is interrupted (the service passes its own budget)
_parser = threading.local()


@dataclass(frozen=True)
class Checked:
    """An expression that passed the parse-tree check, ready for the relational API."""

    text: str
    table: str
    expression: duckdb.Expression


def check(text: str | None, table: str, what: str = "--where") -> Checked:
    """`text` as a filter over `table`, or BadInput naming the first thing it may not use."""
    hint = "\"split = 'TEST' AND ef < 40\"" if what == "--where" else "\"ef < 50\""
    if text is None or not text.strip():
        raise BadInput(f"{what} is empty; give an expression over the {table} table such as {hint}")
    if len(text) > MAX_LENGTH:
        raise BadInput(f"{what} is {len(text)} characters; the limit is {MAX_LENGTH}")
    try:
        expression = duckdb.SQLExpression(text)
    except duckdb.Error as exc:
        raise BadInput(f"{what} {text!r} is not a single SQL expression: {first_line(exc)}") from None
    try:
        tree = _tree(f"SELECT * FROM t WHERE {text}")
        if tree is None:
            raise BadInput(f"{what} {text!r} is not a single SQL expression; give a condition such as {hint}")
        problem = _refusal(tree, set(COLUMNS[table]))
    except RecursionError:
        raise BadInput(f"{what} is nested too deeply; write the condition more plainly") from None
    if problem:
        raise BadInput(f"{what} {text!r}: {problem} (columns of {table}: {', '.join(COLUMNS[table])})")
    return Checked(text, table, expression)


def _tree(sql: str) -> dict | None:
    """DuckDB's parse tree of one SELECT, or None when it is not exactly one."""
    con = getattr(_parser, "con", None)
    if con is None:
        con = _parser.con = duckdb.connect(":memory:", config={"enable_external_access": False})
    out = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if out.get("error") or len(out.get("statements", ())) != 1:
        return None
    return out["statements"][0]["node"]


def _skeleton(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "where_clause"}


_REFERENCE: dict | None = None


def _refusal(tree: dict, columns: set[str]) -> str | None:
    """Why the tree is more than `SELECT * FROM t WHERE <allowed expression>`, or None."""
    global _REFERENCE
    if _REFERENCE is None:
        _REFERENCE = _skeleton(_tree("SELECT * FROM t WHERE NULL"))
    if _skeleton(tree) != _REFERENCE:
        return "only a condition may follow WHERE (no ORDER BY, LIMIT, UNION, GROUP BY or second query)"
    return _walk(tree["where_clause"], columns)


def _walk(node, columns: set[str]) -> str | None:
    if isinstance(node, list):
        return next((p for p in (_walk(n, columns) for n in node) if p), None)
    if not isinstance(node, dict):
        return None
    kind = node.get("class")
    if kind is not None:
        if kind == "SUBQUERY":
            return "subqueries are not allowed; a filter reads only the searched table's own columns"
        if kind not in NODE_CLASSES:
            return f"{kind.lower().replace('_', ' ')} expressions are not allowed"
        if kind == "COLUMN_REF":
            names = node["column_names"]
            if len(names) != 1 or names[0].lower() not in columns:
                return f'column "{".".join(names)}" not found or not filterable'
        if kind == "TYPE" and (node.get("schema") or node.get("catalog")):
            return f"type {node.get('type_name')!r} is not a built-in type"
        if kind == "FUNCTION":
            name = node["function_name"].lower()
            if node.get("schema") or node.get("catalog") or name not in FUNCTIONS:
                return f"function {name}() is not allowed"
            if node.get("filter") or node.get("distinct") or node.get("order_bys", {}).get("orders"):
                return f"function {name}() may not take FILTER, DISTINCT or ORDER BY"
    return next((p for p in (_walk(v, columns) for v in node.values() if isinstance(v, (dict, list))) if p), None)


@contextmanager
def deadline(cursor: duckdb.DuckDBPyConnection, seconds: float, what: str) -> Iterator[None]:
    """Interrupt the cursor's DuckDB work once `seconds` pass; then BadInput (the cost cap of a user expression)."""
    timer = threading.Timer(seconds, cursor.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException:
        raise BadInput(f"{what} ran past its {seconds:g} s budget and was stopped; make it simpler") from None
    finally:
        timer.cancel()


def matching_ids(catalog: Catalog, target: str, where: str, timeout_s: float = FILTER_TIMEOUT_S) -> list[str]:
    """Sorted ids of the `target` catalog rows that satisfy `where`, embedded or not (erasure by --where)."""
    checked = check(where, target)
    with catalog.con.cursor() as cursor, deadline(cursor, timeout_s, f"--where {where!r}"):
        try:
            found = cursor.table(TABLES[target]).select(*COLUMNS[target]).filter(checked.expression).select(KEYS[target]).fetchall()
        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            raise BadInput(f"--where {where!r}: {first_line(exc)} (columns of {target}: {', '.join(COLUMNS[target])})") from None
    return sorted(r[0] for r in found)


def allowed_rows(catalog: Catalog, encoder: str, target: str, where: str,
                 timeout_s: float = FILTER_TIMEOUT_S) -> np.ndarray:
    """Sorted vector rows of (encoder, target) whose catalog row satisfies `where`."""
    checked = check(where, target)
    column, const = duckdb.ColumnExpression, duckdb.ConstantExpression
    key = KEYS[target]
    with catalog.con.cursor() as cursor, deadline(cursor, timeout_s, f"--where {where!r}"):
        try:
            items = cursor.table(TABLES[target]).select(*COLUMNS[target]).filter(checked.expression).select(key)
            embedded = cursor.table("embeddings").filter(
                (column("encoder") == const(encoder)) & (column("target") == const(target)))
            rows = embedded.join(items, column("item_id") == column(key), how="semi").select('"row"').fetchnumpy()["row"]
        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            raise BadInput(f"--where {where!r}: {first_line(exc)} (columns of {target}: {', '.join(COLUMNS[target])})") from None
    return np.sort(np.asarray(rows, dtype=np.int64))


def labelled_rows(catalog: Catalog, label: str,
                  timeout_s: float = FILTER_TIMEOUT_S) -> list[tuple[str, str, str | None, bool | None]]:
    """(video_id, source_path, upper(split), label value) of every video with a file, by id; the label must be yes/no."""
    checked = check(label, "videos", "--label")
    col = duckdb.ColumnExpression
    with catalog.con.cursor() as cursor, deadline(cursor, timeout_s, f"--label {label!r}"):
        try:
            rel = (cursor.table("videos").filter(col("source_path").isnotnull())
                   .select(col("video_id"), col("source_path"), duckdb.FunctionExpression("upper", col("split")),
                           checked.expression).order("video_id"))
            kind = str(rel.types[-1])
            if kind != "BOOLEAN":
                raise BadInput(f"--label {label!r} gives {kind}, not yes/no; write a condition such as \"ef < 50\"")
            return rel.fetchall()
        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            raise BadInput(f"--label {label!r}: {first_line(exc)} (columns of videos: {', '.join(COLUMNS['videos'])})") from None


def first_line(exc: Exception) -> str:
    """DuckDB's message without its class prefix, candidate lists and FROM-clause jargon."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for prefix in ("Parser Error: ", "Binder Error: ", "Conversion Error: ", "Catalog Error: "):
        line = line.removeprefix(prefix)
    return line.replace(" in FROM clause!", "")
