"""The MatchGraph domain settings, declared once (the service's Settings inherits them)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator, model_validator

from graph.matchgraph import PageRankParams

RANK_DIMENSIONS = ("adoption", "quality", "ecosystem", "match_graph", "freshness")
ARTIFACT_TYPES = ("model", "tool", "api")
# Close to the public catalogue service's published method: Adoption ~25 %, Quality ~25 %,
# Ecosystem ~10 %, Match Graph and Freshness the rest.
DEFAULT_WEIGHTS = {"adoption": 0.25, "quality": 0.25, "ecosystem": 0.10, "match_graph": 0.25, "freshness": 0.15}


class EngineConfig(BaseModel):
    """Scoring, bootstrap, fragility, search and ingest knobs of the MatchGraph engine."""

    rank_weights: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {t: dict(DEFAULT_WEIGHTS) for t in ARTIFACT_TYPES},
        description="UnfragileRank weights per artifact type (model, tool, api) and dimension (adoption, quality, "
        "ecosystem, match_graph, freshness), as JSON; a type not listed uses the model weights. A model's rank "
        "uses the weights of the dimensions measured for it, renormalised (docs/ranking.md).")
    match_graph_prior: float = Field(0.5, gt=0, lt=1, description="Match Graph value of a model no search has "
                                     "matched yet: the prior its value is shrunk toward.")
    match_graph_strength: float = Field(
        20.0, gt=0, description="Pseudo-searches of the Match Graph prior: one search moves the value by at most "
        "1/(1+strength) of its range (0.048 at 20).")
    freshness_half_life_days: dict[str, float] = Field(
        default_factory=lambda: {"model": 365.0, "tool": 180.0, "api": 180.0},
        description="Freshness half-life in days per artifact type, as JSON: a release or update this long "
        "before the 'as of' date scores 0.5.")
    freshness_as_of: str = Field(
        "", description="ISO date freshness is evaluated at; '' = the newest read date of any stored reading "
        "(never the wall clock: the same data gives the same numbers).")
    reading_spread_log: float = Field(
        0.7, gt=0, le=5, description="Adoption/ecosystem: one reading's standard deviation in natural-log units of "
        "the count (0.7 = about a factor of two), used unless repeated readings in the catalogue spread wider.")
    bootstrap_rounds: int = Field(200, ge=10, le=5000, description="Bootstrap replicates behind every 95% interval.")
    graph_bootstrap_rounds: int = Field(
        50, ge=5, le=1000, description="PageRank bootstrap replicates (each is a PageRank run; reused cyclically).")
    graph_bootstrap_tol: float = Field(
        1e-7, gt=0, description="PageRank tolerance (L1) of each bootstrap replicate (looser than the point estimate).")
    seed: int = Field(0, ge=0, description="Seed of every bootstrap draw: same evidence -> same intervals.")
    bt_prior: float = Field(
        10.0, ge=0, description="Bradley-Terry pseudo-games on every pair of models that met in a task (split evenly): "
        "one game moves a win probability by at most 0.5/(1+bt_prior).")
    pagerank_damping: float = Field(0.85, gt=0, lt=1, description="PageRank damping factor.")
    pagerank_tol: float = Field(1e-10, gt=0, description="PageRank stops when the L1 change is below this.")
    fragility_threshold: int = Field(5, ge=0, description="A lead erased by removing <= this many records is fragile.")
    fragility_max_records: int = Field(100, ge=1, description="Most removals tried when measuring robustness.")
    fragility_max_edges: int = Field(
        200_000, ge=0, description="Above this many co-match edges the match-graph robustness is not computed.")
    probe_tie_margin: float = Field(0.02, ge=0, le=1, description="Probe scores closer than this are a tie.")
    max_batch_events: int = Field(50_000, ge=1, description="Most events accepted in one RecordMatches message.")
    checkpoint_every_events: int = Field(
        200_000, ge=1, description="Checkpoint the derived co-match counts after this many new events "
        "(a restart replays at most this many events).")
    explain_scan_events: int = Field(
        20_000, ge=1, description="GetModel explain: most recent events scanned for a model's top queries.")
    search_intent_weight: float = Field(
        0.8, ge=0, le=1, description="Search: weight of the intent match against full text, for a query that "
        "expresses its intent clearly (a vaguer one leans on its text; see graph/search.py).")
    search_prior_weight: float = Field(
        0.05, ge=0, le=1, description="Search: share of the match score given to UnfragileRank / 100, which orders "
        "models that match a query equally well.")
    feedback_prior: float = Field(
        0.5, gt=0, lt=1, description="Success rates from reported outcomes: mean of their Beta prior.")
    feedback_strength: float = Field(
        20.0, gt=0, description="Success rates from reported outcomes: pseudo-trials of their Beta prior (one "
        "outcome moves a rate by at most 1 / (1 + strength) from the prior: 0.048 at 20).")
    passport_scan_events: int = Field(
        20_000, ge=1, description="GetPassport: most recent matching events read for per-capability matches, "
        "outcomes and top intents.")

    @field_validator("rank_weights")
    @classmethod
    def _known_weights(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for t, w in value.items():
            if t not in ARTIFACT_TYPES:
                raise ValueError(f"rank_weights: unknown artifact type {t!r} (use {', '.join(ARTIFACT_TYPES)})")
            bad = sorted(set(w) - set(RANK_DIMENSIONS))
            if bad:
                raise ValueError(f"rank_weights[{t!r}]: unknown dimensions {bad} (use {', '.join(RANK_DIMENSIONS)})")
            if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
                raise ValueError(f"rank_weights[{t!r}]: weights must be >= 0 with at least one > 0")
        return value

    @field_validator("freshness_as_of")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        if value:
            import datetime as _dt

            _dt.date.fromisoformat(value)
        return value

    @model_validator(mode="after")
    def _half_lives_positive(self) -> EngineConfig:
        if any(v <= 0 for v in self.freshness_half_life_days.values()):
            raise ValueError("freshness_half_life_days: every half-life must be > 0")
        return self

    def weights_for(self, artifact_type: str) -> dict[str, float]:
        """The UnfragileRank weight of each dimension for models of ``artifact_type`` (absent = 0)."""
        w = self.rank_weights.get(artifact_type, self.rank_weights.get("model", DEFAULT_WEIGHTS))
        return {d: float(w.get(d, 0.0)) for d in RANK_DIMENSIONS}

    @property
    def weights(self) -> dict[str, float]:
        """The weights of the "model" artifact type."""
        return self.weights_for("model")

    @property
    def pagerank(self) -> PageRankParams:
        return PageRankParams(self.pagerank_damping, self.pagerank_tol)


class FollowConfig(BaseModel):
    """How a writer publishes snapshots and how readers follow them (one writer, many readers)."""

    max_staleness_s: float = Field(
        10.0, gt=0, description="Reader: answers from a snapshot more than this many seconds behind the store say so "
        "(stale_seconds in the answer, stale in GetSnapshot).")
    follow_wait_s: float = Field(
        1.0, gt=0, description="Reader: longest wait for a change notice before checking the store anyway (LISTEN "
        "wakes it at once; without LISTEN it polls every change_poll_interval_s).")
    publish_min_interval_s: float = Field(
        0.05, ge=0, description="Writer: least time between two snapshot publications (a burst of writes is "
        "published once).")
    publish_check_s: float = Field(
        1.0, gt=0, description="Writer: how often it checks, when idle, that the store holds nothing it has not "
        "applied (e.g. a batch committed just before the database connection dropped) and publishes it.")
    leader_retry_s: float = Field(
        0.5, gt=0, description="Writer on PostgreSQL (any number of them: one leads, the others stand by): how "
        "often a standby tries for the leadership lock and the leader checks it still holds it. A standby takes "
        "over within about this long after the leader's database session ends.")
