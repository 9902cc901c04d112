"""Contract tests: every JSON endpoint against the OpenAPI document the gateway serves.

Schemathesis generates requests from /openapi.json — valid ones (positive) and ones
that break the documented constraints (negative: wrong types, out-of-range limits,
over-long or control-character text) — sends them to the real gateway in front of
the real MatchGraph, and checks each answer: never a 5xx, a status code the document
lists, the documented content type, a body that matches the documented schema, and
negative inputs rejected with a 4xx (schemathesis'
negative_data_rejection; unknown extra query parameters are ignored, as HTTP APIs do).
Every 4xx must also say what was wrong.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


OPERATIONS = [("/api/v1/search", "GET"), ("/api/v1/rank", "GET"), ("/api/v1/compare", "GET"),
              ("/api/v1/models/{model}", "GET"), ("/api/v1/passport/{slug}", "GET"), ("/api/v1/resolve", "POST"),
              ("/api/feedback", "POST"), ("/api/v1/validate", "POST")]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
# Any document is a valid request to the manifest validator (its problems are the answer: 200, valid: false), so
# it has no schema-violating request to reject: positive cases only.
CASES = [(p, m, g) for p, m in OPERATIONS for g in MODES
         if not (p == "/api/v1/validate" and g == GenerationMode.NEGATIVE)]


@pytest.fixture(scope="session")
def api_schema(base_url: str):
    # Loaded from the running gateway: the document under test is the one clients get.
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_every_json_endpoint_is_contract_tested(api_schema):
    documented = {(op.ok().path, op.ok().method.upper()) for op in api_schema.get_all_operations()
                  if op.ok().path.startswith("/api/")}
    assert documented == set(OPERATIONS)


# schemathesis' own pytest plugin (``from_fixture``/``parametrize``) reads a private
# pytest attribute that pytest 9 removed, so each operation x mode is driven directly
# through its Hypothesis strategy instead; the checks are schemathesis' own.
@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=[f"{m} {p} {g.value}" for p, m, g in CASES])
def test_json_endpoint_conforms_to_openapi(api_schema, base_url, path, method, mode):
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)

    @hypothesis.given(case=strategy)
    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def check(case):
        response = case.call_and_validate(base_url=base_url, checks=CHECKS)
        assert response.status_code < 500
        if 400 <= response.status_code < 500:
            body = response.json()
            assert body["status"] == response.status_code
            assert body["detail"] and len(body["detail"]) > 10, f"unclear error message: {body}"

    check()
