"""The catalogue's capabilities by the intents they serve: what search, resolve and passports match queries to.

Built from the stored records of every model with capabilities (``Store.capability_records``) and
rebuilt when the catalogue changes (its version). Each capability is classified once
(``graph.intents.capability_intents``: its declared intents and its title).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from graph.intents import CapabilityIntents, Intent, capability_intents, capability_uri, classify
from graph.query_facets import downloads_of, licences_of
from graph.records import ModelRecord
from graph.store import Store, normalise_query

QUERY_CACHE_SIZE = 50_000
MIN_STRENGTH = 0.3  # a capability serves an intent when the intent has at least this share of one of its texts


@dataclass(frozen=True)
class IndexedCapability:
    model_id: str
    position: int  # index in the model's capabilities
    title: str
    intents: CapabilityIntents
    of_capabilities: int  # how many capabilities the model has

    @property
    def uri(self) -> str:
        return capability_uri(self.intents.main, self.title)

    def serves(self, intent_id: str) -> float:
        """0..1: how strongly it serves ``intent_id`` (0 below MIN_STRENGTH)."""
        s = self.intents.strength.get(intent_id, 0.0)
        return s if s >= MIN_STRENGTH else 0.0


@dataclass(frozen=True)
class ModelFacts:
    """What search needs of a model besides its capabilities."""

    type: str
    slug: str
    licences: frozenset[str]
    downloads: float  # its largest downloads reading (0 = none)
    capabilities: int

    @classmethod
    def of(cls, rec: ModelRecord) -> ModelFacts:
        return cls(rec.type, rec.public_slug, licences_of(rec), downloads_of(rec), len(rec.capabilities))


class IntentIndex:
    """Capabilities by intent, and a cache of query classifications."""

    def __init__(self, store: Store, catalogue_version: Callable[[], int]) -> None:
        self.store = store
        self.catalogue_version = catalogue_version
        self.lock = threading.Lock()
        self._version = -1
        self._by_intent: dict[str, list[IndexedCapability]] = {}
        self._by_model: dict[str, list[IndexedCapability]] = {}
        self._info: dict[str, ModelFacts] = {}
        self._queries: OrderedDict[str, list[Intent]] = OrderedDict()

    def _fresh(self) -> None:
        version = self.catalogue_version()
        if version == self._version:
            return
        by_intent: dict[str, list[IndexedCapability]] = {}
        by_model: dict[str, list[IndexedCapability]] = {}
        info: dict[str, ModelFacts] = {}
        for rec in self.store.capability_records():
            info[rec.id] = ModelFacts.of(rec)
            for pos, cap in enumerate(rec.capabilities):
                entry = IndexedCapability(rec.id, pos, cap.title, capability_intents(cap.title, cap.intents),
                                          len(rec.capabilities))
                by_model.setdefault(rec.id, []).append(entry)
                for intent_id in entry.intents.strength:
                    if entry.serves(intent_id):
                        by_intent.setdefault(intent_id, []).append(entry)
        self._by_intent, self._by_model, self._info, self._version = by_intent, by_model, info, version

    def serving(self, intent_id: str) -> list[IndexedCapability]:
        """Every capability that serves ``intent_id``, in catalogue order."""
        with self.lock:
            self._fresh()
            return list(self._by_intent.get(intent_id, ()))

    def of_model(self, model_id: str) -> list[IndexedCapability]:
        with self.lock:
            self._fresh()
            return list(self._by_model.get(model_id, ()))

    def info(self, model_id: str) -> ModelFacts | None:
        """Type and slug of a model with capabilities (None: none indexed; read its record instead)."""
        with self.lock:
            self._fresh()
            return self._info.get(model_id)

    def classify(self, query: str) -> list[Intent]:
        """``graph.intents.classify`` of a query, cached by its normalised text."""
        key = normalise_query(query)
        with self.lock:
            hit = self._queries.get(key)
            if hit is not None:
                self._queries.move_to_end(key)
                return hit
        intents = classify(key)
        with self.lock:
            self._queries[key] = intents
            if len(self._queries) > QUERY_CACHE_SIZE:
                self._queries.popitem(last=False)
        return intents
