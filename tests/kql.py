"""The part of the Kusto Query Language the alert rules use, evaluated over rows in memory,
so each rule can be fed a day of telemetry offline and its firing checked.

Tables are lists of dicts (Application Insights' columns: `timestamp`, `name`, `duration`,
`resultCode`, `success`, `target`, `itemCount`, `valueSum`, `customDimensions`, ...).
What is understood: a table, or `union (q), (q)`; `where`, `extend`, `summarize` (sum,
sumif, count, countif, percentile; no `by`); `and`, `or`, `not`; `==`, `!=`, `<`, `<=`,
`>`, `>=`, `has` (by whole terms, as Kusto's term index matches), `in (...)`; `+ - * /`;
`toint`, `todouble`, `tostring`; and `column["key"]`. As in Kusto, a `summarize` of no rows
is one row, with 0 for the counts and sums and null for `percentile`. Anything else is a
syntax error, so a rule cannot silently use more than this understands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
_TOKEN = re.compile(
    r'\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<string>"(?:[^"\\]|\\.)*")|(?P<name>[A-Za-z_]\w*)'
    r"|(?P<op>==|!=|>=|<=|[|()\[\],=<>+\-*/]))"
)


class KqlError(ValueError):
    pass


def tokens(query: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(query.rstrip()):
        match = _TOKEN.match(query, position)
        if not match:
            raise KqlError(f"cannot read {query[position : position + 20]!r}")
        kind = match.lastgroup or ""
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


class _Parser:
    def __init__(self, query: str) -> None:
        self.tokens = tokens(query)
        self.at = 0

    def peek(self, value: str | None = None) -> bool:
        if self.at >= len(self.tokens):
            return False
        return value is None or self.tokens[self.at][1] == value

    def take(self, value: str | None = None) -> str:
        if not self.peek(value):
            got = self.tokens[self.at][1] if self.at < len(self.tokens) else "the end"
            raise KqlError(f"expected {value or 'more'}, got {got}")
        self.at += 1
        return self.tokens[self.at - 1][1]

    def query(self) -> Callable[[dict[str, list[Row]]], list[Row]]:
        source = self.source()
        steps = []
        while self.peek("|"):
            self.take("|")
            steps.append(self.operator())

        def run(tables: dict[str, list[Row]]) -> list[Row]:
            rows = source(tables)
            for step in steps:
                rows = step(rows)
            return rows

        return run

    def source(self) -> Callable[[dict[str, list[Row]]], list[Row]]:
        if self.peek("union"):
            self.take("union")
            parts = [self.parenthesised()]
            while self.peek(","):
                self.take(",")
                parts.append(self.parenthesised())
            return lambda tables: _union([part(tables) for part in parts])
        table = self.take()
        return lambda tables: [dict(row) for row in tables.get(table, [])]

    def parenthesised(self) -> Callable[[dict[str, list[Row]]], list[Row]]:
        self.take("(")
        inner = self.query()
        self.take(")")
        return inner

    def operator(self) -> Callable[[list[Row]], list[Row]]:
        verb = self.take()
        if verb == "where":
            condition = self.expression()
            return lambda rows: [row for row in rows if condition(row) is True]
        if verb == "extend":
            name = self.take()
            self.take("=")
            value = self.expression()
            return lambda rows: [{**row, name: value(row)} for row in rows]
        if verb == "summarize":
            aggregates = [self.aggregate()]
            while self.peek(","):
                self.take(",")
                aggregates.append(self.aggregate())
            return lambda rows: [{name: agg(rows) for name, agg in aggregates}]
        raise KqlError(f"unknown operator {verb}")

    def aggregate(self) -> tuple[str, Callable[[list[Row]], Any]]:
        name = self.take()
        self.take("=")
        function = self.take()
        self.take("(")
        arguments = [] if self.peek(")") else [self.expression()]
        while self.peek(","):
            self.take(",")
            arguments.append(self.expression())
        self.take(")")
        return name, _aggregate(function, arguments)

    # Expressions, loosest first.
    def expression(self) -> Callable[[Row], Any]:
        return self._left_to_right(self.conjunction, ("or",))

    def conjunction(self) -> Callable[[Row], Any]:
        return self._left_to_right(self.negation, ("and",))

    def negation(self) -> Callable[[Row], Any]:
        if self.peek("not"):
            self.take("not")
            inner = self.parenthesised_expression()
            return lambda row: None if (value := inner(row)) is None else not value
        return self.comparison()

    def parenthesised_expression(self) -> Callable[[Row], Any]:
        self.take("(")
        inner = self.expression()
        self.take(")")
        return inner

    def comparison(self) -> Callable[[Row], Any]:
        left = self.sum()
        for op in ("==", "!=", ">=", "<=", ">", "<", "has"):
            if self.peek(op):
                self.take(op)
                return _both(left, self.sum(), _COMPARE[op])
        if self.peek("in"):
            self.take("in")
            self.take("(")
            options = [self.sum()]
            while self.peek(","):
                self.take(",")
                options.append(self.sum())
            self.take(")")
            return lambda row: left(row) in [option(row) for option in options]
        return left

    def sum(self) -> Callable[[Row], Any]:
        return self._left_to_right(self.product, ("+", "-"))

    def product(self) -> Callable[[Row], Any]:
        return self._left_to_right(self.atom, ("*", "/"))

    def _left_to_right(
        self, operand: Callable[[], Callable[[Row], Any]], operators: tuple[str, ...]
    ) -> Callable[[Row], Any]:
        left = operand()
        while any(self.peek(op) for op in operators):
            op = self.take()
            left = _both(left, operand(), _BINARY[op])
        return left

    def atom(self) -> Callable[[Row], Any]:
        if self.peek("("):
            return self.parenthesised_expression()
        if self.peek("-"):
            self.take("-")
            inner = self.atom()
            return lambda row: None if inner(row) is None else -inner(row)
        kind, value = self.tokens[self.at]
        self.at += 1
        if kind == "number":
            number = float(value) if "." in value else int(value)
            return lambda row: number
        if kind == "string":
            text = value[1:-1].encode().decode("unicode_escape")
            return lambda row: text
        if value in ("true", "false"):
            return lambda row: value == "true"
        if self.peek("("):
            self.take("(")
            argument = self.expression()
            self.take(")")
            return _scalar(value, argument)
        if self.peek("["):
            self.take("[")
            key = self.take()[1:-1]
            self.take("]")
            return lambda row: (row.get(value) or {}).get(key)
        return lambda row: row.get(value)


def _both(
    left: Callable[[Row], Any], right: Callable[[Row], Any], op: Callable[[Any, Any], Any]
) -> Callable[[Row], Any]:
    return lambda row: op(left(row), right(row))


def _null_safe(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda a, b: None if a is None or b is None else op(a, b)


_COMPARE = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">=": _null_safe(lambda a, b: a >= b),
    "<=": _null_safe(lambda a, b: a <= b),
    ">": _null_safe(lambda a, b: a > b),
    "<": _null_safe(lambda a, b: a < b),
    "has": _null_safe(lambda a, b: _has(str(a), str(b))),
}


def _has(text: str, term: str) -> bool:
    """Kusto's `has`: `term` found where it starts and ends a term (a run of letters and
    digits), case-insensitively: "kv-x.vault.azure.net" has "vault.azure.net", while
    "KustoExplorer" has not "Explorer"."""
    before = r"(?<![0-9A-Za-z])" if term[:1].isalnum() else ""
    after = r"(?![0-9A-Za-z])" if term[-1:].isalnum() else ""
    return re.search(before + re.escape(term) + after, text, re.IGNORECASE) is not None


class _NoRows(int):
    """The sum of no rows: 0 of whatever type the column has, which rows alone can't tell."""


_NO_ROWS = _NoRows(0)


def _union(parts: list[list[Row]]) -> list[Row]:
    """Rows of every part. Kusto's union (kind=outer) makes a column that is a long in one
    part and a real in another into two columns, `x_long` and `x_real`, so a query that
    goes on to use `x` finds none: refused here as the error it would be there."""
    kinds: dict[str, set[str]] = {}
    for rows in parts:
        for row in rows:
            for column, value in row.items():
                if isinstance(value, bool | _NoRows) or value is None:
                    continue
                if isinstance(value, int):
                    kinds.setdefault(column, set()).add("long")
                elif isinstance(value, float):
                    kinds.setdefault(column, set()).add("real")
    mixed = sorted(column for column, found in kinds.items() if len(found) > 1)
    if mixed:
        raise KqlError(f"union of a long and a real column: {', '.join(mixed)}")
    return [row for rows in parts for row in rows]


_ARITHMETIC = {
    "+": _null_safe(lambda a, b: a + b),
    "-": _null_safe(lambda a, b: a - b),
    "*": _null_safe(lambda a, b: a * b),
    "/": _null_safe(lambda a, b: None if b == 0 else a / b),
}
# A null (a missing column, a failed conversion) is never true.
_BINARY = {
    **_ARITHMETIC,
    "or": lambda a, b: a is True or b is True,
    "and": lambda a, b: a is True and b is True,
}


def _scalar(function: str, argument: Callable[[Row], Any]) -> Callable[[Row], Any]:
    def toint(value: Any) -> int | None:
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None

    def todouble(value: Any) -> float | None:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    functions = {
        "toint": toint,
        "todouble": todouble,
        "tostring": lambda v: "" if v is None else str(v),
    }
    if function not in functions:
        raise KqlError(f"unknown function {function}")
    convert = functions[function]
    return lambda row: convert(argument(row))


def _aggregate(function: str, arguments: list[Callable[[Row], Any]]) -> Callable[[list[Row]], Any]:
    if function == "count":
        return len
    if function == "sum":
        [value] = arguments
        return lambda rows: sum((value(row) or 0 for row in rows), _NO_ROWS)
    if function == "sumif":
        value, condition = arguments
        return lambda rows: sum(value(row) or 0 for row in rows if condition(row) is True)
    if function == "countif":
        [condition] = arguments
        return lambda rows: sum(1 for row in rows if condition(row) is True)
    if function == "percentile":
        value, rank = arguments

        def percentile(rows: list[Row]) -> float | None:
            values = sorted(v for row in rows if (v := value(row)) is not None)
            if not values:
                return None
            index = max(0, math.ceil(rank({}) / 100 * len(values)) - 1)
            return values[index]

        return percentile
    raise KqlError(f"unknown aggregation {function}")


def compile_query(query: str) -> Callable[[dict[str, list[Row]]], list[Row]]:
    parser = _Parser(query)
    run = parser.query()
    if parser.at != len(parser.tokens):
        raise KqlError(f"unread: {parser.tokens[parser.at][1]}")
    return run
