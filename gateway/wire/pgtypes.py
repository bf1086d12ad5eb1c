"""PostgreSQL type OIDs and the text/binary encodings privgate speaks on the wire.

Only the types a released result or a BI tool's catalog query needs: integers, floats, booleans,
text-like, dates and timestamps, ``oid`` and ``name``. Anything else travels as text.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import struct
from collections.abc import Callable
from typing import Any

from rewriter.catalog import LogicalType

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR, DATE, TIMESTAMP, TIMESTAMPTZ, NUMERIC = (
    700,
    701,
    705,
    1042,
    1043,
    1082,
    1114,
    1184,
    1700,
)
XID, REGPROC, INT2VECTOR, OIDVECTOR = 28, 24, 22, 30

TYPE_NAMES = {
    BOOL: "bool",
    INT8: "int8",
    INT2: "int2",
    INT4: "int4",
    TEXT: "text",
    FLOAT4: "float4",
    FLOAT8: "float8",
    VARCHAR: "varchar",
    DATE: "date",
    TIMESTAMP: "timestamp",
}

TYPE_SIZES = {
    BOOL: 1,
    INT2: 2,
    INT4: 4,
    INT8: 8,
    OID: 4,
    FLOAT4: 4,
    FLOAT8: 8,
    DATE: 4,
    TIMESTAMP: 8,
}

_LOGICAL_OIDS = {
    LogicalType.INTEGER: INT8,
    LogicalType.FLOAT: FLOAT8,
    LogicalType.STRING: TEXT,
    LogicalType.DATE: DATE,
    LogicalType.TIMESTAMP: TIMESTAMP,
    LogicalType.BOOLEAN: BOOL,
    LogicalType.OTHER: TEXT,
}

#: What a shadow table column is declared as, per logical type.
SHADOW_TYPES = {
    LogicalType.INTEGER: "bigint",
    LogicalType.FLOAT: "double precision",
    LogicalType.STRING: "text",
    LogicalType.DATE: "date",
    LogicalType.TIMESTAMP: "timestamp",
    LogicalType.BOOLEAN: "boolean",
    LogicalType.OTHER: "text",
}

NUMERIC_OIDS = frozenset({INT2, INT4, INT8, OID, FLOAT4, FLOAT8, NUMERIC})
_EPOCH = dt.date(2000, 1, 1)
_EPOCH_TS = dt.datetime(2000, 1, 1)


class EncodingError(ValueError):
    """A value cannot be encoded or decoded as its declared type (SQLSTATE 22P02)."""


def oid_for(logical: str | LogicalType) -> int:
    """The wire type of a released column of ``logical`` type.

    >>> oid_for("integer"), oid_for("float"), oid_for("string")
    (20, 701, 25)
    """
    return _LOGICAL_OIDS.get(LogicalType(logical), TEXT)


# --- Python value → wire ------------------------------------------------------------------------


def _float_text(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return repr(float(v))


def encode_text(value: Any, oid: int) -> bytes | None:
    """PostgreSQL's text output for ``value`` as type ``oid``.

    >>> encode_text(True, BOOL), encode_text(3, INT8), encode_text(0.5, FLOAT8), encode_text(None, TEXT)
    (b't', b'3', b'0.5', None)
    """
    if value is None:
        return None
    if oid == BOOL:
        return b"t" if value else b"f"
    if oid in (FLOAT4, FLOAT8):
        return _float_text(float(value)).encode()
    if oid in (INT2, INT4, INT8, OID):
        return str(int(value)).encode()
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ").encode()
    if isinstance(value, dt.date):
        return value.isoformat().encode()
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, float):
        return _float_text(value).encode()
    return str(value).encode("utf-8")


def encode_binary(value: Any, oid: int) -> bytes | None:
    """PostgreSQL's binary send format for ``value`` as type ``oid``.

    >>> encode_binary(1, INT4), encode_binary(False, BOOL)
    (b'\\x00\\x00\\x00\\x01', b'\\x00')
    """
    if value is None:
        return None
    try:
        if oid == BOOL:
            return b"\x01" if value else b"\x00"
        if oid == INT2:
            return struct.pack("!h", int(value))
        if oid == INT4:
            return struct.pack("!i", int(value))
        if oid == INT8:
            return struct.pack("!q", int(value))
        if oid == OID:
            return struct.pack("!I", int(value))
        if oid == FLOAT4:
            return struct.pack("!f", float(value))
        if oid == FLOAT8:
            return struct.pack("!d", float(value))
        if oid == DATE:
            day = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
            return struct.pack("!i", (day - _EPOCH).days)
        if oid == TIMESTAMP:
            ts = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
            delta = ts.replace(tzinfo=None) - _EPOCH_TS
            micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            return struct.pack("!q", micros)
    except (struct.error, ValueError, OverflowError) as exc:
        raise EncodingError(f"cannot send {value!r} as {TYPE_NAMES.get(oid, oid)}") from exc
    if oid in (TEXT, VARCHAR, NAME, BPCHAR, CHAR, UNKNOWN):
        return (value if isinstance(value, str) else str(value)).encode("utf-8")
    raise EncodingError(f"binary format of type {oid} is not supported; ask for text")


_TEXT_PARSERS: dict[int, Callable[[str], Any]] = {
    BOOL: lambda s: s in ("t", "true", "1", "on", "yes", "y"),
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    XID: int,
    FLOAT4: float,
    FLOAT8: float,
    DATE: dt.date.fromisoformat,
    TIMESTAMP: dt.datetime.fromisoformat,
}


def text_to_binary(raw: bytes | None, oid: int) -> bytes | None:
    """Re-encode a text-format value (as a shadow server sent it) in binary format."""
    if raw is None:
        return None
    parse = _TEXT_PARSERS.get(oid)
    text = raw.decode("utf-8")
    if oid in (FLOAT4, FLOAT8):
        value: Any = float(text.replace("Infinity", "inf"))
    else:
        value = text if parse is None else parse(text)
    return encode_binary(value, oid)


binary_supported = frozenset(
    {
        BOOL,
        INT2,
        INT4,
        INT8,
        OID,
        FLOAT4,
        FLOAT8,
        DATE,
        TIMESTAMP,
        TEXT,
        VARCHAR,
        NAME,
        BPCHAR,
        CHAR,
    }
)


# --- wire parameter → Python value --------------------------------------------------------------


def decode_param(raw: bytes | None, oid: int, fmt: int) -> Any:
    """A bound parameter as a Python value (``str`` when its type is unknown or text-like).

    >>> decode_param(b"42", INT4, 0), decode_param(b"\\x00\\x00\\x00\\x2a", INT4, 1), decode_param(b"x", 0, 0)
    (42, 42, 'x')
    """
    if raw is None:
        return None
    try:
        if fmt == 0:
            text = raw.decode("utf-8")
            if oid in (INT2, INT4, INT8, OID):
                return int(text)
            if oid in (FLOAT4, FLOAT8):
                return float(text)
            if oid == NUMERIC:
                return decimal.Decimal(text)
            if oid == BOOL:
                return _TEXT_PARSERS[BOOL](text.strip().lower())
            if oid in (DATE, TIMESTAMP):
                return _TEXT_PARSERS[oid](text)
            return text
        if oid == INT2:
            return struct.unpack("!h", raw)[0]
        if oid == INT4:
            return struct.unpack("!i", raw)[0]
        if oid == INT8:
            return struct.unpack("!q", raw)[0]
        if oid == OID:
            return struct.unpack("!I", raw)[0]
        if oid == FLOAT4:
            return struct.unpack("!f", raw)[0]
        if oid == FLOAT8:
            return struct.unpack("!d", raw)[0]
        if oid == BOOL:
            if len(raw) != 1:
                raise EncodingError("a binary boolean is one byte")
            return raw != b"\x00"
        if oid == DATE:
            return _EPOCH + dt.timedelta(days=struct.unpack("!i", raw)[0])
        if oid == TIMESTAMP:
            return _EPOCH_TS + dt.timedelta(microseconds=struct.unpack("!q", raw)[0])
        if oid in (TEXT, VARCHAR, NAME, BPCHAR, CHAR, UNKNOWN, 0):
            return raw.decode("utf-8")
    except (UnicodeDecodeError, ValueError, struct.error, decimal.InvalidOperation) as exc:
        raise EncodingError(f"invalid value for parameter of type {oid}") from exc
    raise EncodingError(f"binary parameters of type {oid} are not supported; send them as text")
