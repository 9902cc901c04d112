"""The peer benchmark's plumbing: LitServe and PyTriton answer exactly what unfragile answers.

The peers run from their own pinned environments under ``.peers/`` (``make bench-peers``
builds them: ~2 minutes each, from PyPI). Without them these tests skip and say how to
build them; ``UNFRAGILE_BUILD_PEER_VENVS=1`` lets the tests build them first. No timing
is asserted: the checks are that the peer servers start from the same model folder, that
the load generator reaches them over their protocols, and that their greedy captions equal
unfragile's token for token (tiny Kosmos-2, whose captions depend on the image) and their
images equal unfragile's for the same seed; LitServe's OpenAISpec server answers the same chat
completions (official ``openai`` SDK) as unfragile's OpenAI-compatible frontend.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.bench_vl import noise_images
from benchmarks.peers import clients as cl
from benchmarks.peers import openai_chat as oc
from benchmarks.peers import report as rp
from benchmarks.peers import servers as sv
from benchmarks.peers import venvs
from services.core.server import RunningServer, start_server

pytestmark = [pytest.mark.peers, pytest.mark.timeout(600)]


def _need(peer: str) -> None:
    if venvs.is_ready(peer):
        return
    if os.environ.get("UNFRAGILE_BUILD_PEER_VENVS") != "1":
        pytest.skip(f"the {peer} peer environment is not built: `make bench-peers` builds {venvs.PEERS_DIR / peer} "
                    f"(pinned, ~2 min, needs PyPI), or set UNFRAGILE_BUILD_PEER_VENVS=1 to let this test build it")
    try:
        venvs.ensure(peer)
    except venvs.PeerEnvError as exc:
        pytest.skip(f"could not build the {peer} peer environment: {exc}")


@pytest.fixture(scope="module")
def kosmos2(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "tiny-kosmos2"


@pytest.fixture(scope="module")
def ours_vl_server(kosmos2: Path) -> Iterator[RunningServer]:
    from services.visionlanguage.app import Settings, build_service

    settings = Settings(port=0, metrics_port=-1, model=str(kosmos2), threads=1, grace_seconds=1)
    server = start_server(settings, build_service(settings))
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def ours_vl(ours_vl_server: RunningServer) -> Iterator[cl.UnfragileCaption]:
    side = cl.UnfragileCaption(ours_vl_server.address, ours_vl_server.address)
    yield side
    side.close()


def _captions(side: object, images: list[bytes]) -> dict[tuple[int, int], list[int]]:
    """Two requests per image (16 and 48 new tokens) from 4 concurrent clients, so the peer batches them."""
    plan = [[(i, 16), (i, 48)] for i in range(len(images))]
    return cl.run_load(lambda key: side.caption(images[key[0]], key[1], check=True), plan).answers  # type: ignore[attr-defined]  # each client class has caption()


@pytest.mark.parametrize("peer", ["litserve", "pytriton"])
def test_peer_captions_equal_ours_token_for_token(peer: str, kosmos2: Path, ours_vl: cl.UnfragileCaption) -> None:
    _need(peer)
    if peer == "litserve":
        server, port = sv.start_litserve(f"test-{peer}-vl", "vl", kosmos2, 1, 4, 2.0, check_model=kosmos2)
        side: cl.LitServeCaption | cl.TritonCaption = cl.LitServeCaption(port)
        ready = f"http://127.0.0.1:{port}/health"
    else:
        server, port = sv.start_pytriton(f"test-{peer}-vl", "vl", kosmos2, 1, 4, 2000, check_model=kosmos2)
        side = cl.TritonCaption(port)
        ready = f"http://127.0.0.1:{port}/v2/models/kosmos2_check/ready"
    try:
        sv.wait_http(server, ready, time.monotonic() + sv.START_TIMEOUT_S)
        images = noise_images(4)
        answers = {"unfragile": _captions(ours_vl, images), peer: _captions(side, images)}
    finally:
        server.stop()
    compared, bad = rp.token_mismatches(answers, peer)
    assert compared == 8 and bad == []
    assert rp.distinct(answers["unfragile"]) > 1  # the comparison is not between constant captions
    assert all(len(ids) == n for (_, n), ids in answers["unfragile"].items())  # no early </s>: full-length work


def test_litserve_image_equals_ours(tiny_models_dir: Path, tmp_path: Path) -> None:
    _need("litserve")
    from services.diffusion.app import Settings, build_service

    model = tiny_models_dir / "tiny-sd"
    settings = Settings(port=0, metrics_port=-1, model=str(model), adapters_dir=tmp_path, torch_threads=1,
                        grace_seconds=1)
    ours_server = start_server(settings, build_service(settings))
    peer, port = sv.start_litserve("test-litserve-sd", "diffusion", model, 1, 4, 25.0)
    ours = cl.UnfragileImage(ours_server.address)
    try:
        sv.wait_http(peer, f"http://127.0.0.1:{port}/health", time.monotonic() + sv.START_TIMEOUT_S)
        theirs = cl.LitServeImage(port)
        answers = {side.name: {seed: side.generate(seed, 4, 64, 7.5) for seed in (3, 4)} for side in (ours, theirs)}
    finally:
        ours.close()
        ours_server.stop(0)
        peer.stop()
    assert rp.pixel_gap(answers, "litserve") == (2, 0)  # one image per call on both sides: identical pixels
    assert answers["unfragile"][3] != answers["unfragile"][4]  # the seed matters


def test_litserve_openai_spec_answers_what_our_frontend_answers(kosmos2: Path, ours_vl_server: RunningServer) -> None:
    """The same chat requests through the openai SDK: LitServe's OpenAISpec (batched) and our frontend agree."""
    _need("litserve")
    import openai

    from services.openai.server import start as start_frontend
    from services.openai.settings import Settings

    frontend = start_frontend(Settings(port=0, visionlanguage_target=ours_vl_server.address, diffusion_target="",
                                       log_level="WARNING"))
    peer, port = sv.start_litserve("test-litserve-openai", "openai", kosmos2, 1, 4, 2.0)
    sides: list[oc.Chat] = []
    try:
        sv.wait_http(peer, f"http://127.0.0.1:{port}/health", time.monotonic() + sv.START_TIMEOUT_S)
        sides.append(oc.Chat("unfragile", f"{frontend.url}/v1"))
        sides.append(oc.Chat("litserve", f"http://127.0.0.1:{port}/v1", sides[0].model))
        answers = oc.check(sides, {}, noise_images(16), 24)  # 8 concurrent clients: LitServe batches them
        with pytest.raises(openai.BadRequestError):  # the LitAPI decodes data URLs only: nothing is fetched
            sides[1].client.chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]}])
    finally:
        for side in sides:
            side.close()
        peer.stop()
        frontend.stop()
    assert len(answers["unfragile"]) == 16 and answers["litserve"] == answers["unfragile"]
    assert len({answers["unfragile"][(i, 64)][0] for i in range(8)}) > 1  # the text depends on the image
