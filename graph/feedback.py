"""RecordFeedback and GetMatch: outcomes reported on match records, one per record.

Which models an outcome credits: the ``artifact`` the report names (it must be one the search
matched); else the models the user clicked in that search; else the search's first matched model
(the top result). Outcomes feed success rates (``Store.feedback_counts``) and never change the
event itself, so every count derived from events stays what it was.

One outcome per match record: the same outcome for the same models again is a duplicate (answered
as such, nothing written); a different one is refused (``AlreadyExists``) naming the stored one.
The row is written in one transaction, after the record's existence is checked in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import AlreadyExists, InvalidArgument, NotFound
from graph.catalogue import Catalogue
from graph.checks import check_text
from graph.records import MatchEvent
from graph.store import FeedbackRow, Store
from graph.store.rows import now_ms

OUTCOMES = ("success", "failure")
_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")


@dataclass(frozen=True)
class Feedback:
    """What became of a search: the outcome a user (or an agent) reports on one match record.

    ``artifact`` names the result the outcome is about (an id, slug or alias among the event's matched
    models); without it the outcome credits the event's clicked models, else its first matched one.
    """

    match_id: str  # the event_id of the match record (a search's or resolve's matchRecordId)
    outcome: str  # one of OUTCOMES
    clicked_through: bool = False
    source: str = ""  # who reports it: "web", "mcp", "api", an agent's name (a short word)
    comment: str = ""
    artifact: str = ""

    def validate(self) -> None:
        if not self.match_id or len(self.match_id) > 200:
            raise InvalidArgument("matchRecordId must be 1..200 characters: the matchRecordId of a search or "
                                  "resolve answer")
        if self.outcome not in OUTCOMES:
            raise InvalidArgument(f"outcome {self.outcome!r} must be 'success' or 'failure'")
        if self.source and not _SOURCE_RE.match(self.source):
            raise InvalidArgument(f"source {self.source[:40]!r} must be a short word (letters, digits, '_.:/-', "
                                  f"<= 100 characters), e.g. 'web' or 'mcp'")
        check_text(self.comment, "comment", required=False, limit=2000)
        check_text(self.artifact, "artifact", required=False, limit=200)


def _missing(match_id: str) -> NotFound:
    return NotFound(f"match record {match_id!r} does not exist: use the matchRecordId of a search or resolve "
                    f"answer of this deployment")


class FeedbackDesk:
    def __init__(self, store: Store, catalogue: Catalogue) -> None:
        self.store = store
        self.catalogue = catalogue

    def get(self, match_id: str) -> tuple[MatchEvent, FeedbackRow | None]:
        if not match_id.strip():
            raise InvalidArgument("match_id is empty: give the matchRecordId of a search or resolve answer")
        found = self.store.match_record(match_id)
        if found is None:
            raise _missing(match_id)
        return found

    def credited(self, fb: Feedback, event: MatchEvent) -> tuple[str, ...]:
        if fb.artifact:
            model_id = self.catalogue.resolve(fb.artifact, "artifact")
            if model_id not in event.matched:
                raise InvalidArgument(f"artifact {fb.artifact!r} ({model_id}) was not among the results of match "
                                      f"record {fb.match_id!r}: name one of {', '.join(event.matched)}")
            return (model_id,)
        return event.clicked or event.matched[:1]

    def record(self, fb: Feedback) -> tuple[MatchEvent, FeedbackRow, bool]:
        """(the match record, the stored outcome, duplicate)."""
        fb.validate()
        event, _old = self.get(fb.match_id)
        row = FeedbackRow(fb.match_id, fb.outcome, fb.clicked_through, fb.source, fb.comment,
                          self.credited(fb, event), now_ms())
        stored = self.store.record_feedback(row)
        if stored is None:
            raise _missing(fb.match_id)
        kept, created = stored
        if not created and (kept.outcome, kept.credited) != (row.outcome, row.credited):
            raise AlreadyExists(f"match record {fb.match_id!r} already has the outcome {kept.outcome!r} for "
                                f"{', '.join(kept.credited)}: one outcome per match record; search again to report "
                                f"on a new one")
        return event, kept, not created
