"""Stop sequences and the visible text of a generation in progress.

Kosmos-2 writes tags (``<phrase>``, ``<object>``, ``<patch_index_…>``) between words.
A stream shows only the text a client can keep: tags are stripped, and text that may
still turn into a stop sequence, or that is inside an unfinished tag, is held back
until the next tokens decide it.
"""

from __future__ import annotations

from services.visionlanguage import grounding as g


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop sequence starts in ``text`` (None: no stop sequence in it)."""
    hits = [i for i in (text.find(st) for st in stops) if i >= 0]
    return min(hits) if hits else None


def safe_prefix(raw: str, stops: tuple[str, ...]) -> str:
    """Hold back text that may still become a stop sequence or is inside an unfinished tag."""
    cut = len(raw)
    for st in stops:
        for k in range(min(len(st) - 1, len(raw)), 0, -1):
            if raw.endswith(st[:k]):
                cut = min(cut, len(raw) - k)
                break
    raw = raw[:cut]
    lt, gt = raw.rfind("<"), raw.rfind(">")
    return raw[:lt] if lt > gt else raw


def clean_completion(raw_gen: str) -> str:
    """The generated text without tags or surrounding whitespace."""
    return g.strip_tags(raw_gen).strip()


def visible_delta(raw_gen: str, stops: tuple[str, ...], emitted: str) -> str:
    """The text to stream now: what became visible since ``emitted`` (the text already sent)."""
    visible = clean_completion(safe_prefix(raw_gen, stops)).rstrip()
    return visible[len(emitted):] if visible.startswith(emitted) else ""
