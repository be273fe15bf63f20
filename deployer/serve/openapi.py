"""The API described as an OpenAPI 3.1 document, served at ``GET /api/v1/openapi.json`` (scope read).

Written by hand from the routes in ``api`` (Starlette has no schema of its own
beyond docstrings); a unit test checks that every API route is in it and
nothing else is, so it cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
JOB = {"$ref": "#/components/schemas/Accepted"}


def _op(summary: str, scope: str, *, body: dict | None = None, params: list | None = None,
        ok: str = "200", ok_schema: dict | None = None, errors: tuple[str, ...] = ("401", "403", "429")) -> dict:
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": [scope]}] if scope != "hmac" else [],
                          "responses": {ok: {"description": "OK" if ok == "200" else "Accepted: a job",
                                             "content": {"application/json": {"schema": ok_schema or {}}}}}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        errors = ("400", "413", *errors)
    for code in errors:
        op["responses"][code] = {"description": _WHY[code], "content": {"application/json": {"schema": ERROR}}}
    return op


_WHY = {"400": "malformed or invalid body", "401": "no or unknown token (or signature)", "403": "missing scope",
        "404": "no such job", "409": "a replayed delivery", "413": "body over the limit",
        "429": "too many failed attempts"}


def _q(name: str, description: str, repeat: bool = False) -> dict:
    schema: dict = {"type": "array", "items": {"type": "string"}} if repeat else {"type": "string"}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema,
            **({"explode": True} if repeat else {})}


def _strings() -> dict:
    return {"type": "array", "items": {"type": "string"}, "minItems": 1}


def document(version: str) -> dict[str, Any]:
    reason = {"type": "string", "minLength": 1, "maxLength": 2000}
    return {
        "openapi": "3.1.0",
        "info": {"title": "deployer serve", "version": version,
                 "description": "The fleet, its history and plan; deploys, rollbacks and locks as queued jobs."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from 'deployer token add NAME --scope ...'"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Accepted": {"type": "object", "properties": {"job": {"type": "string"}, "state": {"type": "string"},
                                                              "url": {"type": "string"}}},
            },
        },
        "paths": {
            "/api/v1/status": {"get": _op("The fleet: dc -> node -> service, the clone's sync, the queue", "read")},
            "/api/v1/history": {"get": _op("Deploy log entries", "read", params=[
                _q("target", "dc, dc/node or dc/node/service"), _q("limit", "1 to 1000 (50)")])},
            "/api/v1/plan": {"get": _op("What 'deployer plan' would change", "read",
                                        params=[_q("target", "dc, dc/node or dc/node/service", True)])},
            "/api/v1/deploy": {"post": _op("Deploy an image (a job)", "deploy", ok="202", ok_schema=JOB, body={
                "type": "object", "required": ["image", "targets", "reason"], "additionalProperties": False,
                "properties": {"image": {"type": "string"}, "targets": _strings(), "reason": reason,
                               "service": {"type": "string"}}})},
            "/api/v1/rollback": {"post": _op("Roll back (a job)", "deploy", ok="202", ok_schema=JOB, body={
                "type": "object", "required": ["reason"], "additionalProperties": False,
                "properties": {"targets": _strings(), "commit": {"type": "string", "pattern": "^[0-9a-fA-F]{4,40}$"},
                               "to": {"type": "string"}, "reason": reason}})},
            "/api/v1/locks": {"post": _op("Take or lift a manual node lock (a job)", "lock", ok="202", ok_schema=JOB,
                                          body={"type": "object", "required": ["target"], "additionalProperties": False,
                                                "properties": {"target": {"type": "string"}, "reason": reason,
                                                               "action": {"enum": ["acquire", "release"]}}})},
            "/api/v1/jobs": {"get": _op("The latest jobs", "read", params=[_q("limit", "1 to 1000 (50)")])},
            "/api/v1/jobs/{job_id}": {"get": {**_op("One job: state, lines, result", "read",
                                                    errors=("401", "403", "404", "429")),
                                              "parameters": [{"name": "job_id", "in": "path", "required": True,
                                                              "schema": {"type": "string"}}]}},
            "/api/v1/events": {"get": {**_op("Server-sent events (text/event-stream)", "read",
                                             params=[_q("types", "comma-separated event types"),
                                                     _q("since", "replay the kept events after this id")])}},
            "/api/v1/openapi.json": {"get": _op("This document", "read")},
            "/api/v1/hooks/{name}": {"post": {**_op("A CI webhook: X-Hub-Signature-256 (HMAC-SHA256 of the body) "
                                                    "and X-GitHub-Delivery; a deploy hook takes tag/image, a release "
                                                    "hook GitHub's push payload (ref, after; 202 with 'ignored' and "
                                                    "no job for another ref)", "hmac", ok="202", ok_schema=JOB,
                                                    body={"type": "object", "properties": {
                                                        "tag": {"type": "string"}, "image": {"type": "string"},
                                                        "reason": {"type": "string"}, "ref": {"type": "string"},
                                                        "after": {"type": "string"}}},
                                                    errors=("400", "401", "403", "409", "429")),
                                              "parameters": [{"name": "name", "in": "path", "required": True,
                                                              "schema": {"type": "string"}}]}},
        },
    }
