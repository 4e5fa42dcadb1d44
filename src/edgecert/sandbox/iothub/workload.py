"""The IoT Edge workload API, as much of it as `create_from_edge_environment()` uses.

Reference iothub-and-edge.md §1.2: the SDK calls, with `?api-version=<IOTEDGE_APIVERSION>` (any is
accepted here),
- `GET /trust-bundle` → 200 `{"certificate": "<PEM>"}`: the sandbox CA, which the SDK then trusts
  for the hub's TLS certificate;
- `POST /modules/{moduleId}/genid/{generationId}/sign`, a JSON body sent without Content-Type,
  `{"keyId": "primary", "algo": "HMACSHA256", "data": "<base64>"}` → 200
  `{"digest": base64(HMAC-SHA256(module key, base64decode(data)))}`.
One workload server serves every emulated device: the generation id, unique per module identity,
says whose key signs (real edgelet has one socket per device and ignores it). Errors answer
`{"message": ...}` as edgelet does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable

from aiohttp import web

from edgecert.sandbox.iothub.auth import sign
from edgecert.sandbox.iothub.hub import Identity

__all__ = ["API_VERSION", "workload_app"]

#: The IOTEDGE_APIVERSION aziot-edged gives modules (reference §1.1).
API_VERSION = "2022-08-03"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def workload_app(*, trust_bundle: str, find_module: Callable[[str, str], Identity | None]) -> web.Application:
    """The workload API app: the trust bundle, and signing with the key of the module `find_module` returns."""

    async def get_trust_bundle(_request: web.Request) -> web.Response:
        return web.json_response({"certificate": trust_bundle})

    async def post_sign(request: web.Request) -> web.Response:
        module_id, generation_id = request.match_info["moduleId"], request.match_info["genId"]
        identity = find_module(module_id, generation_id)
        if identity is None:
            return _error(404, f"module {module_id!r} with generation id {generation_id!r} not found")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object with keyId, algo and data")
        key_id, algo, data = body.get("keyId"), body.get("algo"), body.get("data")
        if key_id not in ("primary", "secondary"):
            return _error(400, f"keyId {key_id!r} must be 'primary' or 'secondary'")
        if algo != "HMACSHA256":
            return _error(400, f"algo {algo!r} is not supported; use 'HMACSHA256'")
        if not isinstance(data, str):
            return _error(400, "data must be a base64 string")
        try:
            message = base64.b64decode(data, validate=True)
        except binascii.Error:
            return _error(400, "data is not base64")
        key = identity.primary_key if key_id == "primary" else identity.secondary_key
        return web.json_response({"digest": sign(key, message)})

    app = web.Application()
    app.router.add_get("/trust-bundle", get_trust_bundle)
    app.router.add_post("/modules/{moduleId}/genid/{genId}/sign", post_sign)
    return app
