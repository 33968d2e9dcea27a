"""The REST API fuzzed from its own OpenAPI schema (schemathesis, in-process ASGI): no 5xx, responses as documented."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from embedstore.analysis.views import compute_view
from embedstore.index import build_index
from embedstore.service.app import create_app
from embedstore.service.settings import Settings
from tests.test_index import PROV, make_store

OPERATIONS = ["GET /health", "GET /encoders", "GET /videos/{video_id}", "GET /videos/{video_id}/thumbnail", "POST /search",
              "POST /search/video", "POST /similarity", "POST /similarity/videos", "GET /views/{encoder}"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    """60 toy videos with an index, a PCA view and small limits, so oversize and over-k cases come up too."""
    path = tmp_path_factory.mktemp("fuzz") / "store"
    store, _, _ = make_store(path, 60)
    build_index(store, PROV["encoder"], progress=False)
    compute_view(store, PROV["encoder"], "pca")
    store.close()
    app = create_app(path, Settings(max_upload_bytes=64 * 1024, max_body_bytes=64 * 1024, max_k=50))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_route_is_fuzzed(api_schema):
    found = {f"{result.ok().method.upper()} {result.ok().path}" for result in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# Listed rather than taken from the schema: schemathesis's lazy pytest loader does not run under pytest 9.
@pytest.mark.parametrize("operation", OPERATIONS)
def test_api_answers_as_documented(api_schema, operation):
    method, path = operation.split(" ")

    @given(case=api_schema[path][method].as_strategy())
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        case.call_and_validate(checks=CHECKS)

    fuzz()
