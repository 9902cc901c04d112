"""Readings from the Hugging Face Hub through ``huggingface_hub.HfApi``: downloads, likes, tags, pipeline
tag, licence, creation and last-modified dates of a model repository.

``read`` asks ``GET {endpoint}/api/models/{id}`` (the endpoint is ``HF_ENDPOINT`` when set, else
huggingface.co, or the one given) and turns the answer into readings dated ``today``, each citing
that URL. ``merge`` folds them into a catalogue record: the Hub's readings replace the record's
earlier readings from the same source (the store keeps those as history), readings from other
sources stay, and tags and the pipeline tag are the Hub's. Downloads are the Hub's count over the
last 30 days; the repository's creation date stands for the release date.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, replace

from common.errors import NotFound, Unavailable
from graph.records import Fact, ModelRecord, Signal, slugify

EXPAND = ["downloads", "likes", "tags", "pipeline_tag", "cardData", "createdAt", "lastModified"]
DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_TAGS = 100  # what a record holds (graph/records.py); the Hub's first ones are kept


@dataclass(frozen=True)
class HubReading:
    """What the Hub said about one repository on one day."""

    repo_id: str
    source: str  # the API URL read
    observed_at: str  # ISO date it was read
    downloads: int | None = None  # last 30 days
    likes: int | None = None
    tags: tuple[str, ...] = ()
    pipeline_tag: str = ""
    licence: str = ""
    created: str = ""  # ISO date
    last_modified: str = ""  # ISO date

    def signals(self) -> tuple[Signal, ...]:
        out = []
        if self.downloads is not None:
            out.append(Signal("downloads", float(self.downloads), self.source, self.observed_at,
                              f"downloads: {self.downloads} (the Hub counts the last 30 days)", "last 30 days"))
        if self.likes is not None:
            out.append(Signal("likes", float(self.likes), self.source, self.observed_at, f"likes: {self.likes}"))
        return tuple(out)

    def facts(self) -> tuple[Fact, ...]:
        out = []
        if self.licence:
            out.append(Fact("licence", self.licence, self.source, self.observed_at, f"license: {self.licence}"))
        if self.created:
            out.append(Fact("released", self.created, self.source, self.observed_at,
                            f"createdAt: {self.created} (the repository's creation date)"))
        if self.last_modified:
            out.append(Fact("last_modified", self.last_modified, self.source, self.observed_at,
                            f"lastModified: {self.last_modified}"))
        return tuple(out)


def endpoint_of(endpoint: str = "") -> str:
    """The Hub endpoint to read: the one given, else ``HF_ENDPOINT``, else huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def read(repo_id: str, endpoint: str = "", today: str = "", timeout_s: float = 30.0) -> HubReading:
    """One repository's readings (NotFound when the Hub has no such model, Unavailable when it cannot be read)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    base = endpoint_of(endpoint)
    api = HfApi(endpoint=base)
    try:
        info = api.model_info(repo_id, expand=EXPAND, timeout=timeout_s, token=False)  # type: ignore[arg-type]
    except RepositoryNotFoundError:
        raise NotFound(f"the Hub at {base} has no model {repo_id!r}") from None
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as exc:
        raise Unavailable(f"the Hub at {base} could not be read for {repo_id!r}: {str(exc).splitlines()[0][:200]}"
                          ) from None
    except Exception as exc:  # the HTTP client's own errors (connect, timeout) have no common public base
        raise Unavailable(f"the Hub at {base} could not be read for {repo_id!r}: {type(exc).__name__}: {exc}"
                          ) from None
    card: dict[str, object] = info.card_data.to_dict() if info.card_data is not None else {}  # type: ignore[no-untyped-call]
    licence = card.get("license") or next((t.split(":", 1)[1] for t in info.tags or () if t.startswith("license:")),
                                          "")
    return HubReading(
        repo_id=info.id or repo_id, source=f"{base}/api/models/{repo_id}",
        observed_at=today or _dt.datetime.now(_dt.UTC).date().isoformat(),
        downloads=info.downloads, likes=info.likes, tags=tuple(dict.fromkeys(info.tags or ()))[:MAX_TAGS],
        pipeline_tag=info.pipeline_tag or "",
        licence=str(licence) if not isinstance(licence, list) else ",".join(map(str, licence)),
        created=info.created_at.date().isoformat() if info.created_at else "",
        last_modified=info.last_modified.date().isoformat() if info.last_modified else "")


def merge(record: ModelRecord, r: HubReading) -> ModelRecord:
    """``record`` with the Hub's readings in place of its earlier ones from the same source (see the module doc)."""
    sig = r.signals()
    facts = r.facts()
    return replace(
        record,
        adoption=tuple(s for s in record.adoption if s.source != r.source) + sig,
        facts=tuple(f for f in record.facts if f.source != r.source) + facts,
        tags=r.tags or record.tags, pipeline_tag=r.pipeline_tag or record.pipeline_tag,
        hub_id=record.hub_id or r.repo_id,
    )


def new_record(r: HubReading) -> ModelRecord:
    """A catalogue record for a repository the catalogue does not have yet (its task from the pipeline tag)."""
    name = r.repo_id.split("/")[-1]
    return ModelRecord(
        id=slugify(name) or slugify(r.repo_id), name=name, aliases=(r.repo_id,), hub_id=r.repo_id,
        url=f"{DEFAULT_ENDPOINT}/{r.repo_id}", slug=r.repo_id.replace("/", "--").lower(),
        organization=r.repo_id.split("/")[0] if "/" in r.repo_id else "",
        tasks=(r.pipeline_tag,) if r.pipeline_tag else (), pipeline_tag=r.pipeline_tag, tags=r.tags,
        adoption=r.signals(), facts=r.facts())
