"""Croissant 1.1 metadata (MLCommons' JSON-LD description of ML data sets) for an export bundle.

Why: tools that load data sets by their Croissant record (mlcroissant, Hugging Face, Kaggle, OpenML)
can then find the vectors and metadata columns of a bundle without knowing embedstore. Written from
the bundle's manifest only, so it says nothing the manifest does not (no paths, no salt, no dates);
the de-identification statement goes to the RAI property personalSensitiveInformation.
The `mlcroissant` package validates these records in the tests; it is not needed to write them.
"""
from __future__ import annotations

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "data": {
        "@id": "cr:data",
        "@type": "@json"
    },
    "dataType": {
        "@id": "cr:dataType",
        "@type": "@vocab"
    },
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {
        "@id": "cr:examples",
        "@type": "@json"
    },
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform"
}
DATA_TYPES = {"string": "sc:Text", "int32": "sc:Integer", "int64": "sc:Integer", "double": "sc:Float",
              "float": "sc:Float"}
ENCODING = {"parquet": "application/x-parquet", "hdf5": "application/x-hdf5"}


def croissant(manifest: dict) -> dict:
    """The Croissant record of a bundle whose manifest has its files (with sizes and sha256) filled in."""
    target, fmt, dim = manifest["target"], manifest["vectors_format"], int(manifest["dim"])
    encoder = manifest["encoder"]["encoder"]
    vectors = [f for f in manifest["files"] if f["role"] == "vectors"]
    distribution = [{"@type": "cr:FileObject", "@id": f["path"], "name": f["path"], "contentUrl": f["path"],
                     "contentSize": f"{f['size']} B", "encodingFormat": ENCODING[fmt], "sha256": f["sha256"]}
                    for f in vectors]
    source = {"fileObject": {"@id": vectors[0]["path"]}}
    if len(vectors) > 1:  # Parquet shards: one file set over all of them
        distribution.append({"@type": "cr:FileSet", "@id": "vector-shards", "name": "vector-shards",
                             "encodingFormat": ENCODING[fmt], "includes": "vectors-*.parquet"})
        source = {"fileSet": {"@id": "vector-shards"}}
    fields = [{"@type": "cr:Field", "@id": f"{target}/{name}", "name": name, "dataType": DATA_TYPES[kind],
               "source": {**source, "extract": {"column": name}}} for name, kind in manifest["columns"].items()]
    fields.append({"@type": "cr:Field", "@id": f"{target}/vector", "name": "vector", "dataType": "cr:Float32",
                   "cr:isArray": True, "cr:arrayShape": str(dim),
                   "description": f"{encoder} embedding, L2-normalised ({manifest['normalisation']})",
                   "source": {**source, "extract": {"column": "vector"}}})
    licence = manifest["licence"]
    deid = manifest.get("deidentification")
    sensitive = ("Derived from DICOM files: Patient Identity Removed YES; "
                 + ", ".join(f"{m['meaning']} (DCM {m['code']})" for m in deid["method_codes"])
                 + "; patient and study ids are keyed hashes, no dates.") if deid else \
        "Patient and study ids, when present, are keyed hashes or the source data set's own ids; no dates."
    return {
        "@context": CONTEXT, "@type": "sc:Dataset", "conformsTo": CONFORMS_TO,
        "name": manifest["name"],
        "description": f"{manifest['count']} {encoder} vectors ({dim}-d) of {target}, with their metadata: "
                       f"an embedstore bundle (format {manifest['format']} v{manifest['bundle_version']}).",
        "creator": {"@type": "sc:Organization", "name": "embedstore"},
        "datePublished": manifest["created"][:10], "version": f"{manifest['bundle_version']}.0.0",
        "license": f"vectors: {licence['vectors']}; source data: {licence['data']}",
        "citeAs": licence.get("citation") or manifest["name"],
        "rai:personalSensitiveInformation": sensitive,
        "distribution": distribution,
        "recordSet": [{"@type": "cr:RecordSet", "@id": target, "name": target, "field": fields}],
    }
