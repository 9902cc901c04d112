"""A small test catalogue for the catalogue-service interfaces: the two seed models and three invented ones
with slugs, declared intents and conditions (not real models: plumbing data only)."""

from __future__ import annotations

from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

CAPTIONER = "captioner-a"
PAINTER = "painter-c"
ENCODER = "encoder-d"


def _cap(title: str, description: str, intents: list[str], inputs: list[str], outputs: list[str],
         limitations: list[str] | None = None) -> pb.Capability:
    return pb.Capability(title=title, description=description, intents=intents, best_for=["tests"],
                         limitations=limitations or [], input_types=inputs, output_types=outputs)


TEST_MODELS = [
    pb.ModelRecord(
        id=CAPTIONER, name="Captioner A", type=pb.MODEL_TYPE_MODEL, slug="test-org--captioner-a",
        url="https://example.org/captioner-a", pipeline_tag="image-to-text", tags=["license:mit"],
        pricing=pb.Pricing(tier=pb.PRICING_TIER_FREE, model="open_source"),
        failure_modes=[pb.FailureMode(mode="misses small objects", frequency="occasional")],
        capabilities=[
            _cap("Image captioning", "Writes one sentence about a photo.", ["caption an image", "describe a photo"],
                 ["image"], ["text"], ["one sentence only"]),
            _cap("Visual question answering", "Answers short questions about an image.",
                 ["answer questions about an image"], ["image", "text"], ["text"])]),
    pb.ModelRecord(
        id=PAINTER, name="Painter C", type=pb.MODEL_TYPE_MODEL, slug="test-org--painter-c",
        pricing=pb.Pricing(tier=pb.PRICING_TIER_PAID, model="usage", starting_price=9.0),
        capabilities=[
            _cap("Text-to-image", "Makes pictures from prompts.", ["generate an image from text"], ["text"],
                 ["image"]),
            _cap("Upscaling", "Doubles the resolution of an image.", ["upscale an image"], ["image"], ["image"])]),
    pb.ModelRecord(
        id=ENCODER, name="Encoder D", type=pb.MODEL_TYPE_TOOL, slug="test-org--encoder-d",
        capabilities=[_cap("Image-text embeddings", "Vectors of images and texts for retrieval.",
                           ["embed images and text"], ["image", "text"], ["embedding"])]),
]


def seed_test_catalogue(stub: object) -> None:
    """UpsertModel the seed models and TEST_MODELS over gRPC."""
    from graph.seed_data import SEED_MODELS
    from services.matchgraph.types import record_to_pb

    for m in [*(record_to_pb(r) for r in SEED_MODELS), *TEST_MODELS]:
        stub.UpsertModel(pb.UpsertModelRequest(model=m))  # type: ignore[attr-defined]
