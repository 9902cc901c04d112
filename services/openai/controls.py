"""Controlled generation through the image endpoints (extensions): ControlNets, T2I-Adapters, IP-Adapters.

``controls``, ``ip_adapter``, ``reference_images``, ``ip_adapter_scale`` and ``return_control_maps``
of a request become the same fields of the service's GenerationParams; the images in them are
data: URLs, plain base64 or (with ``allow_remote_images``) http(s) URLs fetched under the SSRF
guard, and for multipart edits also file parts (``control_image`` / ``reference_image``). The
service checks every value (names, scales, windows, images, families) and its message comes
back as the 400/404. ``GET /v1/controlnets`` lists the control models (ListControlNets).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from services.openai.errors import invalid
from services.openai.inputs import inline_image
from services.openai.schemas import ImageGenerationRequest
from services.openai.settings import Settings
from services.openai.upstream import DIFFUSION, Upstreams
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb

router = APIRouter()
KINDS = {None: pb.CONTROL_KIND_UNSPECIFIED, "controlnet": pb.CONTROL_KIND_CONTROLNET,
         "t2i_adapter": pb.CONTROL_KIND_T2I_ADAPTER}
LIST_TIMEOUT_S = 10.0


async def add_controls(p: pb.GenerationParams, body: ImageGenerationRequest, settings: Settings,
                       control_files: Sequence[bytes] = (), reference_files: Sequence[bytes] = ()) -> None:
    """Fill the control fields of ``p`` from ``body``. ``control_files`` are the images of the controls
    without an inline ``image``, in order; ``reference_files`` follow the inline reference images."""
    files = list(control_files)
    for j, c in enumerate(body.controls or []):
        param = f"controls[{j}].image"
        if c.image is not None:
            image = await inline_image(c.image, settings, param)
        elif files:
            image = files.pop(0)
        else:
            raise invalid(f"{param} is missing: give each control an image (a data: URL or base64; for edits also "
                          "a control_image file part, taken in order by the controls without an image)", param)
        control = pb.Control(controlnet=c.controlnet, image=cpb.Image(data=image), preprocess=c.preprocess or "",
                             kind=KINDS[c.kind], canny_low_threshold=c.canny_low_threshold or 0,
                             canny_high_threshold=c.canny_high_threshold or 0)
        for name in ("conditioning_scale", "guidance_start", "guidance_end"):
            if getattr(c, name) is not None:
                setattr(control, name, getattr(c, name))
        p.controls.append(control)
    if files:
        without = sum(1 for c in body.controls or [] if c.image is None)
        raise invalid(f"{len(control_files)} control_image file(s) for {without} control(s) without an inline image; "
                      "send one file per control that has no image, in order", "control_image")
    for i, ref in enumerate(body.reference_images or []):
        p.reference_images.append(cpb.Image(data=await inline_image(ref, settings, f"reference_images[{i}]")))
    p.reference_images.extend(cpb.Image(data=data) for data in reference_files)
    p.ip_adapter = body.ip_adapter or ""
    if body.ip_adapter_scale is not None:
        p.ip_adapter_scale = body.ip_adapter_scale
    p.return_control_maps = bool(body.return_control_maps)


def control_maps(result: pb.GeneratedImages, body: ImageGenerationRequest) -> dict[str, Any]:
    """``{"control_maps": [...]}`` when the request asked for them (PNG, one per control, in order), else {}."""
    if not body.return_control_maps:
        return {}
    names = [c.controlnet for c in body.controls or []]
    return {"control_maps": [{"index": j, "controlnet": names[j] if j < len(names) else None,
                              "b64_json": base64.b64encode(m.data).decode(), "output_format": "png"}
                             for j, m in enumerate(result.control_maps)]}


@router.get("/v1/controlnets", summary="The control models of the Diffusion service (extension)")
async def list_controlnets(request: Request) -> Response:
    ups: Upstreams = request.app.state.upstreams
    listed = await ups.unary(DIFFUSION, "ListControlNets", pb.ListControlNetsRequest(), LIST_TIMEOUT_S)
    data = [{"id": m.name, "object": "control_model", "kind": m.kind, "family": m.family, "format": m.format,
             "class_name": m.class_name, "size_bytes": m.size_bytes, "loaded": m.loaded, "modes": list(m.modes)}
            for m in listed.models]
    return JSONResponse({"object": "list", "data": data, "preprocessors": list(listed.preprocessors)})
