"""The REST API fuzzed from its own OpenAPI schema (schemathesis, in-process ASGI) with every check schemathesis
has: no 5xx, responses as documented, schema-invalid requests refused, schema-valid ones never refused as
invalid (422)."""
from __future__ import annotations

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS as REGISTRY
from schemathesis.checks import load_all_checks
from schemathesis.config._checks import NegativeDataRejectionConfig, PositiveDataAcceptanceConfig

from embedstore.analysis.views import compute_view
from embedstore.index import build_index
from embedstore.service.app import create_app
from embedstore.service.settings import Settings
from tests.test_index import PROV, make_store

OPERATIONS = ["GET /health", "GET /encoders", "GET /videos/{video_id}", "GET /videos/{video_id}/thumbnail", "POST /search",
              "POST /search/video", "POST /similarity", "POST /similarity/videos", "GET /views/{encoder}",
              "POST /search/batch", "GET /audit", "POST /predict"]
load_all_checks()
CHECKS = REGISTRY.get_all()
# A valid request may still be refused for what no schema can say: a vector of another dimension, a filter that
# names an unknown column, k over the store's size, text on an encoder without a text tower (400), an unknown id
# (404), a file that is no video (415), an upload over the limit (413). Never 422: that one means "not the schema".
ACCEPTED = ["2xx", "400", "401", "404", "409", "413", "415", "503"]
# An invalid request is refused as invalid (400, 422), or first for its size (413) before anything parses it.
REFUSED = ["400", "401", "404", "405", "413", "415", "422", "503"]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    """60 toy videos with an index, a PCA view and small limits, so oversize and over-k cases come up too."""
    path = tmp_path_factory.mktemp("fuzz") / "store"
    store, _, _ = make_store(path, 60)
    build_index(store, PROV["encoder"], progress=False)
    compute_view(store, PROV["encoder"], "pca")
    store.close()
    app = create_app(path, Settings(max_upload_bytes=64 * 1024, max_body_bytes=64 * 1024, max_k=50))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(expected_statuses=ACCEPTED)
    schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(expected_statuses=REFUSED)
    return schema


def test_every_route_is_fuzzed(api_schema):
    found = {f"{result.ok().method.upper()} {result.ok().path}" for result in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# Listed rather than taken from the schema: schemathesis's lazy pytest loader does not run under pytest 9.
# Invalid requests exist only where a route takes a body or a typed parameter.
TAKES_INPUT = ["GET /videos/{video_id}/thumbnail", "POST /search", "POST /search/video", "POST /similarity",
               "POST /similarity/videos", "GET /views/{encoder}", "POST /search/batch", "GET /audit", "POST /predict"]


@pytest.mark.parametrize("operation, mode", [*((o, GenerationMode.POSITIVE) for o in OPERATIONS),
                                             *((o, GenerationMode.NEGATIVE) for o in TAKES_INPUT)],
                         ids=[*(f"{o} valid" for o in OPERATIONS), *(f"{o} invalid" for o in TAKES_INPUT)])
def test_api_answers_as_documented(api_schema, operation, mode):
    method, path = operation.split(" ")

    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        case.call_and_validate(checks=CHECKS)

    fuzz()
