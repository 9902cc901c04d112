"""Community LoRA files (kohya and diffusers layouts) in lora_dir, trained SDXL adapters, family checks."""

from __future__ import annotations

import grpc
import pytest
from PIL import Image

from tests.diffusion.conftest import FAMILIES, TITLES, events_of, params, png, result_of
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb

FILES = {f"{family}-{layout}": (family, layout) for family in FAMILIES for layout in ("diffusers", "kohya")}


def _generate(stub, *adapters: pb.AdapterWeight) -> bytes:
    req = pb.TextToImageRequest(params=params(steps=2, seed=11, adapters=list(adapters)))
    return result_of(events_of(stub.TextToImage, req)).images[0].image.data


def _status(stub, *adapters: pb.AdapterWeight) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _generate(stub, *adapters)
    return info.value


@pytest.mark.parametrize("family", FAMILIES)
def test_list_adapters_shows_files_with_family_rank_and_layout(family_servers, family) -> None:
    stub = family_servers.stub(family)
    listed = {a.name: a for a in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=10).adapters}
    for name, (made_for, layout) in FILES.items():
        a = listed[name]
        assert (a.family, a.format, a.source, a.rank) == (made_for, layout, "file", 4), name
        assert a.size_bytes > 1000
    plain = listed["sdxl-plain-v2"]  # "sdxl plain.v2.safetensors": no metadata, family from its widths
    assert plain.rank == 2 and plain.family == ("sdxl" if family == "sdxl" else "")


@pytest.mark.parametrize("family", FAMILIES)
def test_own_family_files_change_the_output_reproducibly(family_servers, family) -> None:
    stub = family_servers.stub(family)
    base = _generate(stub)
    layouts = ("diffusers", "kohya") if family in ("sd", "sdxl") else ("diffusers",)
    for layout in layouts:
        adapter = pb.AdapterWeight(name=f"{family}-{layout}")
        with_it = _generate(stub, adapter)
        assert with_it != base and _generate(stub, adapter) == with_it
        assert _generate(stub, pb.AdapterWeight(name=f"{family}-{layout}", weight=0.5)) not in (base, with_it)
    assert _generate(stub) == base  # no adapter: the base model again


@pytest.mark.parametrize("family", FAMILIES)
def test_another_familys_adapter_is_failed_precondition(family_servers, family) -> None:
    stub = family_servers.stub(family)
    for other in set(FAMILIES) - {family}:
        err = _status(stub, pb.AdapterWeight(name=f"{other}-diffusers"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert TITLES[other] in err.details() and TITLES[family] in err.details()
    if family != "sdxl":  # a file without metadata whose layers are too wide for this model
        err = _status(stub, pb.AdapterWeight(name="sdxl-plain-v2"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_kohya_layout_on_sd3_names_the_alternative(family_servers) -> None:
    err = _status(family_servers.stub("sd3"), pb.AdapterWeight(name="sd3-kohya"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "diffusers" in err.details()


def _examples() -> list[pb.TrainingExample]:
    return [pb.TrainingExample(image=cpb.Image(data=png(Image.new("RGB", (64, 64), c))), caption=f"a red cat {i}")
            for i, c in enumerate([(220, 20, 20), (20, 20, 220)])]


def test_sdxl_finetune_writes_an_adapter_that_loads_back(family_servers) -> None:
    stub = family_servers.stub("sdxl")
    base = _generate(stub)
    resp = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="xl-red", examples=_examples(), steps=3,
                                                      learning_rate=0.05, rank=4, seed=1), timeout=60)
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=resp.job_id), timeout=120))
    assert events[-1].status.state == cpb.JOB_STATE_SUCCEEDED, events[-1].status.message
    assert [e.step for e in events if e.status.state == cpb.JOB_STATE_RUNNING and e.step] == [1, 2, 3]
    listed = {a.name: a for a in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=10).adapters}
    a = listed["xl-red"]
    assert (a.family, a.source, a.format, a.rank, a.steps) == ("sdxl", "trained", "diffusers", 4, 3)
    with_it = _generate(stub, pb.AdapterWeight(name="xl-red"))
    assert with_it != base and _generate(stub, pb.AdapterWeight(name="xl-red")) == with_it
    # the servers share one adapters_dir: the SD 1.x server lists it and refuses it
    err = _status(family_servers.stub("sd"), pb.AdapterWeight(name="xl-red"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and TITLES["sdxl"] in err.details()


def test_sd3_finetune_is_failed_precondition(family_servers) -> None:
    with pytest.raises(grpc.RpcError) as info:
        family_servers.stub("sd3").StartFineTune(pb.StartFineTuneRequest(
            adapter_name="sd3-try", examples=_examples(), steps=1), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Stable Diffusion 3" in info.value.details() and "lora_dir" in info.value.details()
