"""Metadata filters: a MongoDB-style dict (the dialect LangChain's FAISS and Chroma stores accept)
compiled to an SQLite ``WHERE`` clause over the JSON metadata column.

Semantics (the tests compare them with a plain-Python evaluation):

- ``{"field": value}`` or ``{"field": {"$eq": value}}``: the field holds ``value``. Strings equal strings;
  numbers (int, float, bool) equal numbers numerically (``1 == 1.0 == True`` as in Python); ``None``
  matches a missing field or a JSON ``null``. Arrays and objects stored in metadata never equal a scalar.
- ``{"field": [a, b]}`` is ``{"field": {"$in": [a, b]}}`` (as in LangChain's FAISS store).
- ``$ne`` (alias ``$neq``): not ``$eq`` (so a missing field matches).
- ``$gt`` ``$gte`` ``$lt`` ``$lte``: the field is present, of the operand's kind (number or string;
  strings compare by code point) and compares true; anything else does not match.
- ``$in`` / ``$nin``: ``$eq`` one of / none of the listed values.
- Several fields or several operators in one dict: all must hold. ``$and`` / ``$or`` take a list of
  filters, ``$not`` one filter.

Field names are used literally (no dotted paths into nested objects).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Tuple

_NUMBER_TYPES = "('integer', 'real', 'true', 'false')"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_COMPARE_SQL = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIELD_OPERATORS = {"$eq", "$ne", "$neq", "$in", "$nin", *_COMPARE_SQL}
_LOGICAL_OPERATORS = {"$and", "$or", "$not"}

Where = Mapping[str, Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def _check_scalar(value: Any, where: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"filter value {value} in {where} is outside the 64-bit integer range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter value {value} in {where} is not finite")
        return value
    raise ValueError(
        f"filter values must be str, int, float, bool or None; got {type(value).__name__} in {where}"
    )


class _Compiler:
    """Builds one SQL expression with ``?`` parameters; every leaf evaluates to 0 or 1, never NULL,
    so that ``NOT`` is safe."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.params: List[Any] = []

    # -- field access ----------------------------------------------------------------------------
    def _path(self, field: str) -> Tuple[str, str, Any]:
        """SQL for the JSON type and the value of a top-level field (type NULL when the field is
        missing), and the one parameter each of them takes."""
        if '"' not in field and "\\" not in field:
            return f"json_type({self.column}, ?)", f"json_extract({self.column}, ?)", f'$."{field}"'
        # Exotic keys: look them up through json_each, which takes the key as a plain parameter.
        return (
            f"(SELECT type FROM json_each({self.column}) WHERE key = ?)",
            f"(SELECT value FROM json_each({self.column}) WHERE key = ?)",
            field,
        )

    def _eq(self, field: str, value: Any) -> str:
        value = _check_scalar(value, f"{field!r}")
        jtype, jvalue, key = self._path(field)
        if value is None:
            self.params.append(key)
            return f"coalesce({jtype}, 'null') = 'null'"
        kind = "= 'text'" if isinstance(value, str) else f"IN {_NUMBER_TYPES}"
        self.params.extend([key, key, value])
        return f"coalesce({jtype} {kind} AND {jvalue} = ?, 0)"

    def _compare(self, field: str, op: str, value: Any) -> str:
        if value is None or not (isinstance(value, str) or _is_number(value)):
            raise ValueError(f"{op} on {field!r} needs a number or a string, got {value!r}")
        value = _check_scalar(value, f"{field!r}")
        jtype, jvalue, key = self._path(field)
        kind = "= 'text'" if isinstance(value, str) else f"IN {_NUMBER_TYPES}"
        self.params.extend([key, key, value])
        return f"coalesce({jtype} {kind} AND {jvalue} {_COMPARE_SQL[op]} ?, 0)"

    def _in(self, field: str, values: Any, op: str) -> str:
        if not isinstance(values, (list, tuple, set, frozenset)):
            raise ValueError(f"{op} on {field!r} needs a list of values, got {type(values).__name__}")
        terms = [self._eq(field, v) for v in values]
        return "(" + " OR ".join(terms) + ")" if terms else "0"

    # -- structure -------------------------------------------------------------------------------
    def field(self, field: str, condition: Any) -> str:
        if isinstance(condition, Mapping):
            if not condition:
                raise ValueError(f"empty operator dict for field {field!r}")
            terms = []
            for op, operand in condition.items():
                if op == "$eq":
                    terms.append(self._eq(field, operand))
                elif op in ("$ne", "$neq"):
                    terms.append(f"NOT {self._eq(field, operand)}")
                elif op in _COMPARE_SQL:
                    terms.append(self._compare(field, op, operand))
                elif op == "$in":
                    terms.append(self._in(field, operand, op))
                elif op == "$nin":
                    terms.append(f"NOT {self._in(field, operand, op)}")
                else:
                    raise ValueError(
                        f"unknown filter operator {op!r} for field {field!r}; "
                        f"known: {', '.join(sorted(_FIELD_OPERATORS))}"
                    )
            return "(" + " AND ".join(terms) + ")"
        if isinstance(condition, (list, tuple)):
            return self._in(field, condition, "$in")
        return self._eq(field, condition)

    def where(self, where: Any) -> str:
        if not isinstance(where, Mapping):
            raise ValueError(f"a filter must be a dict, got {type(where).__name__}")
        if not where:
            return "1"
        terms = []
        for key, value in where.items():
            if not isinstance(key, str):
                raise ValueError(f"filter keys must be strings, got {key!r}")
            if key in ("$and", "$or"):
                if not isinstance(value, (list, tuple)) or not value:
                    raise ValueError(f"{key} needs a non-empty list of filters")
                joiner = " AND " if key == "$and" else " OR "
                terms.append("(" + joiner.join(self.where(sub) for sub in value) + ")")
            elif key == "$not":
                terms.append(f"NOT {self.where(value)}")
            elif key.startswith("$"):
                raise ValueError(
                    f"unknown logical operator {key!r}; known: {', '.join(sorted(_LOGICAL_OPERATORS))}"
                )
            else:
                terms.append(self.field(key, value))
        return "(" + " AND ".join(terms) + ")"


def compile_where(where: Where, column: str = "metadata") -> Tuple[str, List[Any]]:
    """SQL boolean expression and its parameters for a filter dict; ValueError for a malformed one.

    >>> sql, params = compile_where({"year": {"$gte": 2020}, "lang": "en"})
    >>> params
    ['$."year"', '$."year"', 2020, '$."lang"', '$."lang"', 'en']
    """
    compiler = _Compiler(column)
    sql = compiler.where(where)
    return sql, compiler.params


def as_predicate(where: Any) -> Callable[[Dict[str, Any]], bool]:
    """A callable filter is used as is (it receives each record's metadata dict)."""
    if not callable(where):
        raise TypeError(f"filter must be a dict or a callable, got {type(where).__name__}")
    return where


_DOCUMENT_OPERATORS = ("$contains", "$not_contains", "$and", "$or")


def compile_where_document(where_document: Any, column: str = "document") -> Tuple[str, List[Any]]:
    """SQL boolean expression and parameters for a chromadb-style document filter.

    ``{"$contains": "text"}`` (the document holds ``text``, case-sensitive; a record without a document
    does not), ``{"$not_contains": "text"}``, and ``{"$and": [...]}`` / ``{"$or": [...]}`` of those.
    Anything else (``$regex`` among them) raises ValueError naming what is supported.

    >>> compile_where_document({"$or": [{"$contains": "cat"}, {"$contains": "dog"}]})[1]
    ['cat', 'dog']
    """
    params: List[Any] = []
    supported = ", ".join(_DOCUMENT_OPERATORS)

    def compile_one(node: Any) -> str:
        if not isinstance(node, Mapping) or len(node) != 1:
            raise ValueError(
                f"where_document must be a dict with one operator, e.g. {{'$contains': 'text'}} "
                f"(supported: {supported}); got {node!r}"
            )
        ((op, operand),) = node.items()
        if op in ("$contains", "$not_contains"):
            if not isinstance(operand, str) or not operand:
                raise ValueError(f"{op} in where_document needs a non-empty string, got {operand!r}")
            params.append(operand)
            expr = f"coalesce(instr({column}, ?) > 0, 0)"
            return expr if op == "$contains" else f"NOT {expr}"
        if op in ("$and", "$or"):
            if not isinstance(operand, (list, tuple)) or not operand:
                raise ValueError(f"{op} in where_document needs a non-empty list of document filters")
            joiner = " AND " if op == "$and" else " OR "
            return "(" + joiner.join(compile_one(sub) for sub in operand) + ")"
        raise ValueError(f"where_document operator {op!r} is not supported; supported: {supported}")

    return compile_one(where_document), params
