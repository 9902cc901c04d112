"""The catalogue in memory: model ids in graph order, their store nodes, names and aliases.

Ids follow store node (rowid) order, which is also the dense index order of the match graph
and of the per-model counters, so ``pos[id]`` indexes all three. Records themselves stay in
the store; ``record_of`` keeps a small cache of them.
"""

from __future__ import annotations

import difflib
import threading
from collections import OrderedDict

from common.errors import InvalidArgument, NotFound
from graph.records import ModelRecord, slugify
from graph.store import Store

RECORD_CACHE_SIZE = 4096


class Catalogue:
    """Resolves what users type to model ids and keeps the id/node/name maps of the stored models."""

    def __init__(self, store: Store, lock: threading.RLock) -> None:
        self.store = store
        self.lock = lock
        self.version = 0  # bumps on every change of a record: caches of catalogue data key on it
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.node_of: dict[str, int] = {}
        self.alias: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self._records: OrderedDict[tuple[str, int], ModelRecord] = OrderedDict()

    def load(self) -> list[int]:
        """Read the maps from the store; returns the store nodes in graph order."""
        with self.lock:
            nodes, aliases, names = self.store.model_nodes(), self.store.aliases(), self.store.names()
            self.ids = [m for _n, m in nodes]  # assigned only once everything was read: all or nothing
            self.pos = {m: i for i, m in enumerate(self.ids)}
            self.node_of = {m: n for n, m in nodes}
            self.alias, self.names = aliases, names
            self.version += 1
            return [n for n, _m in nodes]

    def name(self, model_id: str) -> str:
        return self.names.get(model_id, model_id)

    def resolve(self, name: str, what: str = "model") -> str:
        """id, display name or alias (case-insensitive) -> id, or NotFound with suggestions."""
        key = name.strip()
        if not key:
            raise InvalidArgument(f"{what} is empty: give a model id, name or alias")
        if key in self.pos:
            return key
        low = key.lower()
        if low in self.pos:
            return low
        if low in self.alias:
            return self.alias[low]
        slug = slugify(key)
        if slug in self.pos:
            return slug
        close = difflib.get_close_matches(low, [*self.pos, *self.alias], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(self.alias.get(c, c)) for c in close)}?" if close else ""
        raise NotFound(f"{what} {name!r} is not in the match graph{hint} (add it with UpsertModel)")

    def resolve_fast(self, name: str) -> str:
        """``resolve`` with the common case (an exact id) first: the ingest hot path."""
        if name in self.pos:
            return name
        return self.resolve(name)

    def upsert(self, record: ModelRecord) -> tuple[bool, int]:
        """Validate and store ``record``; returns (created, store node). Names and aliases stay unique."""
        record.validate()
        with self.lock:
            for alias in {a.lower() for a in (record.name, *record.aliases, record.slug) if a}:
                owner = self.alias.get(alias, alias if alias in self.pos else None)
                if owner is not None and owner != record.id:
                    raise InvalidArgument(f"name/alias {alias!r} already belongs to model {owner!r}; "
                                          f"choose another alias or update {owner!r}")
            created, node = self.store.upsert_model(record)
            if created:
                self.pos[record.id] = len(self.ids)
                self.ids.append(record.id)
                self.node_of[record.id] = node
            self.alias = self.store.aliases()
            self.names[record.id] = record.name
            self.version += 1
            return created, node

    def upsert_many(self, records: list[ModelRecord], validated: bool = False) -> list[int]:
        """Validate (unless the caller did) and store ``records`` in one transaction (all or none); returns the
        store nodes of the new ones."""
        ids: set[str] = set()
        for k, record in enumerate(records):
            try:
                if not validated:
                    record.validate()
            except InvalidArgument as exc:
                raise InvalidArgument(f"record {k} ({record.id!r}): {exc.message}") from None
            if record.id in ids:
                raise InvalidArgument(f"record {k}: model {record.id!r} appears twice in one import batch")
            ids.add(record.id)
        with self.lock:
            claimed: dict[str, str] = {}
            for record in records:
                for alias in {a.lower() for a in (record.name, *record.aliases, record.slug) if a}:
                    owner = claimed.get(alias) or self.alias.get(alias, alias if alias in self.pos else None)
                    if owner is not None and owner != record.id and owner not in ids:
                        raise InvalidArgument(f"model {record.id!r}: name/alias {alias!r} already belongs to model "
                                              f"{owner!r}; choose another alias or update {owner!r}")
                    if claimed.get(alias, record.id) != record.id:
                        raise InvalidArgument(f"models {claimed[alias]!r} and {record.id!r} both claim the "
                                              f"name/alias {alias!r}")
                    claimed[alias] = record.id
            results = self.store.upsert_models(records)
            created = []
            replaced = False
            for record, (new, node) in zip(records, results, strict=True):
                if new:
                    self.pos[record.id] = len(self.ids)
                    self.ids.append(record.id)
                    self.node_of[record.id] = node
                    created.append(node)
                replaced |= not new
                self.names[record.id] = record.name
            if replaced:  # their old aliases went with their old rows
                self.alias = {a: m for a, m in self.alias.items() if m not in ids}
            self.alias.update(claimed)
            for record in records:
                self.alias.pop(record.id, None)  # an id is not its own alias (the store keeps none)
            self.version += 1
            return created

    def stored(self, model_id: str) -> ModelRecord:
        """The record as the store has it now (no cache)."""
        rec = self.store.get_model(model_id)
        if rec is None:
            raise NotFound(f"model {model_id!r} disappeared from the store")
        return rec

    def record_of(self, model_id: str) -> ModelRecord:
        """The stored record, through a small LRU cache (records change only by upsert)."""
        key = (model_id, self.version)
        rec = self._records.get(key)
        if rec is not None:
            self._records.move_to_end(key)
            return rec
        rec = self.stored(model_id)
        self._records[key] = rec
        if len(self._records) > RECORD_CACHE_SIZE:
            self._records.popitem(last=False)
        return rec
