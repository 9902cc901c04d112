"""LoRA fine-tune jobs over gRPC: progress, adapters on disk, hot-load, restart, cancel."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
from PIL import Image

from services.core.client import channel
from tests.diffusion.conftest import make_settings, params, png, result_of, start
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc


def _examples(n: int = 2) -> list[pb.TrainingExample]:
    colours = [(220, 20, 20), (20, 20, 220), (20, 200, 20)]
    return [pb.TrainingExample(image=cpb.Image(data=png(Image.new("RGB", (80, 64), colours[i % 3]))),
                               caption=f"a red cat {i}") for i in range(n)]


def _generate(stub, **kw) -> bytes:
    return result_of(list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=2, seed=321, **kw)),
                                           timeout=60))).images[0].image.data


def _watch(stub, job_id: str) -> list[pb.JobEvent]:
    return list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=120))


@pytest.fixture(scope="module")
def trained(stub) -> dict[str, object]:
    """Train one adapter for the whole module (5 steps, a high LR so the effect is visible)."""
    base = _generate(stub)
    resp = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="red-cats", examples=_examples(), steps=5,
                                                      learning_rate=0.05, rank=4, seed=3), timeout=60)
    assert resp.job_id.startswith("ft-")
    assert resp.status.state in (cpb.JOB_STATE_QUEUED, cpb.JOB_STATE_RUNNING)
    events = _watch(stub, resp.job_id)
    return {"base": base, "events": events, "job_id": resp.job_id}


def test_finetune_progress_and_success(trained) -> None:
    events: list[pb.JobEvent] = trained["events"]  # type: ignore[assignment]  # the fixture dict holds several value types
    assert events[-1].status.state == cpb.JOB_STATE_SUCCEEDED, events[-1].status.message
    steps = [e.step for e in events if e.status.state == cpb.JOB_STATE_RUNNING and e.step]
    assert steps == [1, 2, 3, 4, 5]
    running = [e for e in events if e.step]
    assert all(e.total_steps == 5 and e.loss > 0 and e.kind == "finetune" for e in running)
    assert running[-1].eta_ms == 0 and events[-1].adapter_name == "red-cats"


def test_adapter_listed_and_changes_output(stub, trained) -> None:
    adapters = {a.name: a for a in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=10).adapters}
    a = adapters["red-cats"]
    assert a.size_bytes > 1000 and a.rank == 4 and a.steps == 5 and a.final_loss > 0 and a.created_at
    with_adapter = _generate(stub, adapters=[pb.AdapterWeight(name="red-cats")])
    assert with_adapter != trained["base"]
    assert _generate(stub, adapters=[pb.AdapterWeight(name="red-cats")]) == with_adapter
    # half weight is a different image again; no adapter restores the base output exactly
    assert _generate(stub, adapters=[pb.AdapterWeight(name="red-cats", weight=0.5)]) not in (with_adapter,
                                                                                              trained["base"])
    assert _generate(stub) == trained["base"]


def test_adapter_survives_restart(stub, trained, server, tiny_sd) -> None:
    with_adapter = _generate(stub, adapters=[pb.AdapterWeight(name="red-cats")])
    second = start(make_settings(tiny_sd, server.settings.adapters_dir))
    try:
        with channel(second.address) as ch:
            stub2 = pb_grpc.DiffusionStub(ch)
            assert "red-cats" in [a.name for a in stub2.ListAdapters(pb.ListAdaptersRequest(), timeout=10).adapters]
            assert _generate(stub2, adapters=[pb.AdapterWeight(name="red-cats")]) == with_adapter
    finally:
        second.stop(0)


def test_existing_name_needs_overwrite(stub, trained) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="red-cats", examples=_examples(), steps=1),
                           timeout=30)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_cancel_finetune_and_generation_is_not_blocked(stub, server) -> None:
    resp = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="never-saved", examples=_examples(3),
                                                      steps=5000), timeout=60)
    for ev in stub.WatchJob(pb.WatchJobRequest(job_id=resp.job_id), timeout=60):
        if ev.step >= 1:
            break
    # generation runs while the job trains (at most one training step in between)
    assert result_of(list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=2)), timeout=60))).images
    snap = _watch_once(stub, resp.job_id)
    assert snap.status.state == cpb.JOB_STATE_RUNNING and snap.step < 5000
    cancelled = stub.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), timeout=30)
    assert cancelled.status.state == cpb.JOB_STATE_CANCELLED
    names = [a.name for a in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=10).adapters]
    assert "never-saved" not in names
    assert not (server.settings.adapters_dir / "never-saved").exists()


def _watch_once(stub, job_id: str) -> pb.JobEvent:
    stream = stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=30)
    first = next(stream)
    stream.cancel()
    return first


def test_finetune_from_confined_folder(stub, data_root, tmp_path) -> None:
    folder = data_root / "set1"
    folder.mkdir()
    for i, colour in enumerate([(250, 0, 0), (0, 250, 0)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a green tree {i}")
    (folder / "notes.md").write_text("ignored")
    resp = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="from-folder", data_folder="set1", steps=2),
                              timeout=60)
    assert _watch(stub, resp.job_id)[-1].status.state == cpb.JOB_STATE_SUCCEEDED
    # an empty folder, and a link that leaves the root, are refused
    (data_root / "empty").mkdir()
    with pytest.raises(grpc.RpcError) as info:
        stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="x", data_folder="empty"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in info.value.details()
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    os.symlink(outside, data_root / "escape")
    with pytest.raises(grpc.RpcError) as info:
        stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="x", data_folder="escape"), timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_lora_file_is_safetensors(server, trained) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(server.settings.adapters_dir / "red-cats" / "pytorch_lora_weights.safetensors"))
    assert weights and all(k.startswith("unet.") and "lora" in k for k in weights)
    assert any(float(np.abs(v.numpy()).max()) > 0 for k, v in weights.items() if "lora_B" in k or "lora.up" in k)
