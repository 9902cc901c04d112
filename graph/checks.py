"""Field checks shared by the domain records: each raises InvalidArgument naming the field and the fix."""

from __future__ import annotations

import datetime as _dt
import re

from common.errors import InvalidArgument

TASK_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# owner--name as the real catalogue service spells it, e.g. "microsoft--kosmos-2-patch14-224"
SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,39}$")  # input/output types ("image", "text", "boxes")
URL_RE = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
MAX_TEXT = 8000
MAX_LIST = 50  # items in one list field of a capability or a model (intents, tags, ...)


def _path(what: str, name: str) -> str:
    """The field's path in messages, built only when one is raised (validation runs on every imported record)."""
    return f"{what}.{name}" if name else what


_DATES_SEEN: set[str] = set()  # valid dates already checked: an import's readings share a few read dates


def check_date(value: str, what: str, name: str = "") -> None:
    if value in _DATES_SEEN:
        return
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{what}: {name or 'observed_at'} {value!r} is not an ISO date like 2026-11-01"
                              ) from None
    if len(_DATES_SEEN) < 100_000:  # ~270 years of days: bounded
        _DATES_SEEN.add(value)


def check_text(value: str, what: str, *, required: bool = True, limit: int = MAX_TEXT, name: str = "") -> None:
    """``value`` at most ``limit`` characters and, when ``required``, not blank; ``what``.``name`` is its path."""
    if len(value) > limit:
        raise InvalidArgument(f"{_path(what, name)} is {len(value)} characters; the limit is {limit}")
    if required and not value.strip():
        raise InvalidArgument(f"{_path(what, name)} is empty; give a short text")


def check_list(values: tuple[str, ...], what: str, *, limit: int = 500, items: int = MAX_LIST, name: str = "",
               unique: bool = True) -> None:
    """Each item a non-empty text of at most ``limit`` characters, at most ``items`` of them, none repeated."""
    if not values or (len(values) <= items and max(map(len, values)) <= limit and all(map(str.strip, values))
                      and (not unique or len(set(values)) == len(values))):
        return  # the common case, checked in C; the loop below names what is wrong
    path = _path(what, name)
    if len(values) > items:
        raise InvalidArgument(f"{path} has {len(values)} items; at most {items}")
    for i, v in enumerate(values):
        check_text(v, f"{path}[{i}]", limit=limit)
    if unique and len(set(values)) != len(values):
        raise InvalidArgument(f"{path} lists an item twice")


def check_kinds(values: tuple[str, ...], what: str, name: str = "") -> None:
    """Lowercase words ("image", "text", "boxes"), at most 20, none repeated."""
    if not values or (len(values) <= 20 and all(map(KIND_RE.match, values)) and len(set(values)) == len(values)):
        return
    path = _path(what, name)
    check_list(values, path, limit=40, items=20)
    for i, v in enumerate(values):
        if not KIND_RE.match(v):
            raise InvalidArgument(f"{path}[{i}] {v!r} must be a lowercase word like 'image', 'text' or 'boxes'")


def check_url(value: str, what: str, name: str = "") -> None:
    """An absolute http(s) URL of at most 500 characters (empty is allowed: no URL)."""
    if value and (len(value) > 500 or not URL_RE.match(value)):
        raise InvalidArgument(f"{_path(what, name)} {value[:80]!r} must be an absolute http(s) URL of at most 500 "
                              f"characters")
