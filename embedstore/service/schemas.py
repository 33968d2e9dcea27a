"""Request and response models of the REST service (pydantic v2); the OpenAPI schema at /docs comes from them.

Requests refuse unknown fields, so a misspelt option is a 422 rather than silently ignored. Responses
mirror what the library returns (`SearchResult.to_dict()`, `similar()`), under the names the API
promises (`results`, `encoder_provenance`).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Target = Literal["videos", "reports", "studies"]
MAX_DIM = 16_384  # longer than any encoder's output: refused by the schema, before any parsing work
MAX_TEXT = 10_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable name, e.g. not_found, bad_input, busy, timeout")
    message: str = Field(description="one line naming the problem and the fix")


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- store ---------------------------------------------------------------------------------------
class Health(BaseModel):
    """Only `status` for a caller without the token when one is set; everything with it (or without a token set)."""

    status: Literal["ok"] = "ok"
    version: str | None = None
    videos: int | None = None
    encoders: list[str] | None = None
    indexes_loaded: list[str] | None = Field(None, description="'<encoder>.<target>' of every index held in memory")


class EncoderSet(BaseModel):
    """One encoder's vectors in this store, with the provenance a search result carries."""

    name: str
    dim: int
    modalities: list[str]
    weights_sha256: str
    random_init: bool
    package_version: str | None = None
    preprocessing: dict[str, Any]
    vectors: dict[str, int] = Field(description="target (videos, reports) -> number of vectors")
    indexed: list[str] = Field(description="targets with a loaded index (searchable)")


class Encoders(BaseModel):
    encoders: list[EncoderSet]


class VideoRecord(BaseModel):
    video_id: str
    metadata: dict[str, Any] = Field(description="the catalog row")
    encoders: list[str] = Field(description="encoders with a vector for this video")


# -- search --------------------------------------------------------------------------------------
QUERY_KINDS = ("video_id", "vector", "text", "report", "study_id")


def exactly_one_of(kinds: tuple[str, ...], companion: tuple[str, str] | None = None):
    """json_schema_extra saying what the validators enforce: exactly one of `kinds`, given as a value
    (never null); a `companion` (field, kind) field may come only with that kind. Without it, schema-valid
    requests (two kinds, or none) were refused with 422 (schemathesis's positive-data check)."""

    def others(kind: str) -> list[dict]:
        names = [*kinds, *([companion[0]] if companion and companion[1] != kind else [])]
        return [{"required": [name]} for name in names if name != kind]

    def extra(schema: dict) -> None:
        for prop in schema["properties"].values():
            if "anyOf" in prop:
                branch = next(b for b in prop.pop("anyOf") if b.get("type") != "null")
                prop.update(branch)
                prop.pop("default", None)
        schema["oneOf"] = [{"required": [kind], "not": {"anyOf": others(kind)}} for kind in kinds]

    return extra


class Query(Strict):
    """Exactly one of video_id, vector, text, report, study_id (a section only with study_id)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=exactly_one_of(QUERY_KINDS, ("section", "study_id")))

    video_id: str | None = Field(None, min_length=1, max_length=512, description="a stored video id")
    vector: list[float] | None = Field(None, min_length=1, max_length=MAX_DIM, description="normalised by the server")
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT, description="free text (text encoders)")
    report: str | None = Field(None, min_length=1, max_length=MAX_TEXT,
                               description="a stored report id, or report text (text encoders)")
    study_id: str | None = Field(None, min_length=1, max_length=512, description="a stored study (target studies)")
    section: str | None = Field(None, min_length=1, max_length=128,
                                description="with study_id: the EchoPrime report section (default Left Ventricle)")

    @model_validator(mode="before")
    @classmethod
    def no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(kind, "") is None for kind in (*QUERY_KINDS, "section")):
            raise ValueError(f"give the query as one of {', '.join(QUERY_KINDS)} with a value, not null")
        return data

    @model_validator(mode="after")
    def one_query(self) -> "Query":
        given = [name for name in QUERY_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(QUERY_KINDS)} (got {', '.join(given) or 'none'})")
        if self.section is not None and self.study_id is None:
            raise ValueError("section goes with study_id only")
        return self


class SearchScope(Strict):
    """Which vectors a search (or a batch of them) looks at, and how many neighbours it returns."""

    encoder: str = Field(min_length=1, max_length=128)
    k: int = Field(10, ge=1, description="number of neighbours; the service's max_k bounds it (400 above)")
    target: Target = "videos"
    where: str | None = Field(None, max_length=4000, description="DuckDB expression over the catalog, e.g. split = 'TEST' AND ef < 40")


class SearchOptions(SearchScope):
    """What every search takes; with an uploaded video these come as multipart form fields."""

    same_patient: bool = Field(False, description="one hit per patient: its best video and how many were near")


class SearchRequest(SearchOptions):
    query: Query
    exclude_self: bool = Field(True, description="leave the query video out of a video_id search")


class Hit(BaseModel):
    rank: int
    id: str
    score: float = Field(description="cosine similarity")
    metadata: dict[str, Any]
    count: int | None = Field(None, description="same_patient: this patient's videos among the neighbours")


class EfEstimate(BaseModel):
    mean: float
    std: float
    n: int
    k: int | None = Field(None, description="neighbours searched for the estimate (independent of the hits shown)")
    left_out: str | None = Field(None, description="what the estimate leaves out: the query's video and patient")


class SearchResponse(BaseModel):
    results: list[Hit]
    filtered_out: int = Field(description="rows the where filter removed")
    encoder_provenance: dict[str, Any]
    took_ms: float
    ef_estimate: EfEstimate | None = Field(description="mean and SD of the neighbours' EF labels")
    query: dict[str, Any]

    @staticmethod
    def body(result: dict) -> dict:
        """`SearchResult.to_dict()` under the API's names; the routes send it without re-validating it."""
        return {"results": result["hits"], "filtered_out": result["filtered_out"],
                "encoder_provenance": result["provenance"], "took_ms": result["took_ms"],
                "ef_estimate": result["ef_estimate"], "query": result["query"]}


# -- similarity and views ------------------------------------------------------------------------
class SimilarityRequest(Strict):
    encoder: str = Field(min_length=1, max_length=128)
    a: str = Field(min_length=1, max_length=512, description="a stored video id")
    b: str = Field(min_length=1, max_length=512, description="a stored video id")


class SimilarityResponse(BaseModel):
    a: str
    b: str
    encoder: str
    cosine: float
    same_patient_probability: float | None = Field(description="calibrated on the store's labelled pairs; null without any")
    calibration: dict[str, Any]


class UploadSimilarityForm(Strict):
    encoder: str = Field(min_length=1, max_length=128)


class View(BaseModel):
    """A stored 2-D map (`embedstore view`), as analysis.views.load_view returns it."""

    model_config = ConfigDict(extra="allow")  # method-specific extras, e.g. PCA's explained_variance_ratio

    encoder: str
    method: Literal["umap", "pca"]
    n: int
    stale: bool = Field(description="the vectors changed since the view was computed")
    random_init: bool
    params: dict[str, Any]
    seed: int
    ids: list[str]
    x: list[float]
    y: list[float]
    labels: dict[str, list[Any]] = Field(description="catalog column -> one value per id")


# -- batch search --------------------------------------------------------------------------------
class BatchQueries(Strict):
    """Exactly one of video_ids, vectors: one search per item."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=exactly_one_of(("video_ids", "vectors")))

    video_ids: list[str] | None = Field(None, min_length=1, description="stored video ids")
    vectors: list[list[float]] | None = Field(None, min_length=1, description="query vectors, normalised by the server")

    @model_validator(mode="before")
    @classmethod
    def no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(kind, "") is None for kind in ("video_ids", "vectors")):
            raise ValueError("give video_ids or vectors with a value, not null")
        return data

    @model_validator(mode="after")
    def one_kind(self) -> "BatchQueries":
        if (self.video_ids is None) == (self.vectors is None):
            raise ValueError("give exactly one of video_ids, vectors")
        return self

    def __len__(self) -> int:
        return len(self.video_ids if self.video_ids is not None else self.vectors)


class BatchSearchRequest(SearchScope):
    """Many searches with the same options, answered by one index call (`Searcher.search_many`)."""

    exclude_self: bool = Field(True, description="leave each query video out of its own video_ids answer")
    queries: BatchQueries = Field(description="the service's max_batch bounds their number (400 above)")


class BatchSearchResponse(BaseModel):
    searches: list[SearchResponse] = Field(description="one per query, in the order given")

class PredictRequest(Strict):
    """Prediction by retrieval over this store's own study vectors (`embedstore predict` without --bank)."""

    encoder: str = Field("echoprime", min_length=1, max_length=128)
    study_id: str = Field(min_length=1, max_length=512)
    section: str | None = Field(None, min_length=1, max_length=128, description="EchoPrime report section (default Left Ventricle)")
    k: int = Field(50, ge=1, description="neighbour studies; the service's max_k bounds it (400 above)")
    labels: list[str] | None = Field(None, max_length=3, description="of ef, esv, edv (default all)")
