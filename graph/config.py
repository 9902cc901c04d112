"""The MatchGraph domain settings, declared once (the service's Settings inherits them)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from graph.matchgraph import PageRankParams


class EngineConfig(BaseModel):
    """Scoring, bootstrap, fragility, search and ingest knobs of the MatchGraph engine."""

    weight_adoption: float = Field(0.25, ge=0, description="Weight of Adoption in UnfragileRank.")
    weight_ecosystem: float = Field(0.25, ge=0, description="Weight of Ecosystem in UnfragileRank.")
    weight_match_graph: float = Field(0.25, ge=0, description="Weight of Match Graph in UnfragileRank.")
    weight_quality: float = Field(0.25, ge=0, description="Weight of Quality in UnfragileRank.")
    bootstrap_rounds: int = Field(200, ge=10, le=5000, description="Bootstrap replicates behind every 95% interval.")
    graph_bootstrap_rounds: int = Field(
        50, ge=5, le=1000, description="PageRank bootstrap replicates (each is a PageRank run; reused cyclically).")
    graph_bootstrap_tol: float = Field(
        1e-7, gt=0, description="PageRank tolerance (L1) of each bootstrap replicate (looser than the point estimate).")
    seed: int = Field(0, ge=0, description="Seed of every bootstrap draw: same evidence -> same intervals.")
    bt_prior: float = Field(1.0, ge=0, description="Bradley-Terry pseudo-games per pair (keeps strengths finite).")
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

    @model_validator(mode="after")
    def _weights_positive(self) -> EngineConfig:
        if self.weight_adoption + self.weight_ecosystem + self.weight_match_graph + self.weight_quality <= 0:
            raise ValueError("at least one weight_* must be > 0")
        return self

    @property
    def weights(self) -> dict[str, float]:
        """The UnfragileRank weight of each dimension."""
        return {"adoption": self.weight_adoption, "ecosystem": self.weight_ecosystem,
                "match_graph": self.weight_match_graph, "quality": self.weight_quality}

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
