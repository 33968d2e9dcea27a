"""`embedstore`: the command line. Each command parses, calls one library function, and prints.

Errors from the library (EmbedstoreError) become one line on stderr and exit code 2.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from embedstore.errors import EmbedstoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Embedding dataset and vector search for echocardiogram videos.")

StoreOpt = Annotated[Optional[Path], typer.Option("--store", "-s", help="store folder (default $EMBEDSTORE_HOME)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


def command(*args, **kwargs):
    """app.command, plus the one-line error contract for library errors."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            try:
                return fn(*a, **k)
            except EmbedstoreError as exc:
                typer.echo(f"error: {exc.message}", err=True)
                raise typer.Exit(2) from None

        return app.command(*args, **kwargs)(wrapper)

    return deco


def emit(data, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(data if isinstance(data, str) else json.dumps(data, indent=2, default=str))


@command()
def phantom(
    out: Annotated[Path, typer.Argument(help="folder to write the cohort into")],
    patients: int = typer.Option(20, min=1, help="number of patients"),
    videos_per_patient: int = typer.Option(3, min=1, help="videos per patient (spread over studies)"),
    studies_per_patient: int = typer.Option(1, min=1, help="studies per patient (follow-up visits)"),
    frames: int = typer.Option(128, min=8, help="frames per video (50 fps)"),
    seed: int = typer.Option(0, help="random seed; the cohort is deterministic for a seed"),
) -> None:
    """Write a synthetic EchoNet-Dynamic-shaped cohort (AVI videos, FileList.csv, tracings, reports)."""
    from embedstore.datasets.phantom import make_phantom

    summary = make_phantom(out, patients=patients, videos_per_patient=videos_per_patient,
                           studies_per_patient=studies_per_patient, seed=seed, frames=frames)
    typer.echo(f"phantom cohort in {out}: " + ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, int)))


@command()
def ingest(
    source: Annotated[Path, typer.Argument(help="EchoNet-style folder (FileList.csv + Videos/), a folder of videos, or one file")],
    store: StoreOpt = None,
    reports: Annotated[Optional[Path], typer.Option(help="reports.csv (report_id, study_id or video_id, text)")] = None,
    workers: int = typer.Option(2, min=1, help="decode threads"),
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Register videos in a store (idempotent by content); bad files are skipped and listed."""
    from embedstore.datasets.ingest import ingest as run_ingest
    from embedstore.store import open_store

    with open_store(store, create=True) as st:
        summary = run_ingest(source, st, reports=reports, workers=workers, progress=not quiet)
    if as_json:
        emit(summary.as_dict(), True)
        return
    typer.echo(f"added {summary.added}, unchanged {summary.unchanged}, labelled {summary.labelled}, "
               f"reports {summary.reports}, skipped {len(summary.skipped)}")
    for item, reason in summary.skipped:
        typer.echo(f"  skipped: {reason if item in reason else f'{item}: {reason}'}")


@command()
def info(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Counts per table, vector sets, indexes and size of a store."""
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        data = st.info()
    if as_json:
        emit(data, True)
        return
    typer.echo(f"store {data['path']} ({data['bytes'] / 1e6:.1f} MB)")
    typer.echo("  " + ", ".join(f"{k} {v}" for k, v in data["counts"].items()))
    for s in data["vector_sets"]:
        typer.echo(f"  vectors {s['encoder']}/{s['target'] or '-'}: {s['n']} x {s['dim']} (weights {s['weights_sha256'][:12]})")
    for name in data["indexes"]:
        typer.echo(f"  index {name}")


EncoderOpt = Annotated[str, typer.Option("--encoder", "-e", help="encoder name (see `embedstore encoders`)")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="checkpoint file or folder (else $EMBEDSTORE_WEIGHTS/<encoder>/, then the hub caches)")]
RandomOpt = Annotated[bool, typer.Option("--random-init", help="use random weights on purpose (recorded in provenance)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda")]
PoolingOpt = Annotated[Optional[str], typer.Option("--pooling", help="videomae token pooling: max (EchoVisionFM) or mean")]
VocabOpt = Annotated[Optional[Path], typer.Option("--vocab", help="echoclip-r template vocabulary (else $EMBEDSTORE_ECHOCLIP_R_VOCAB)")]


def load_encoder(name: str, weights: Path | None, random_init: bool, device: str, pooling: str | None = None,
                 vocab: Path | None = None):
    from embedstore.encoders import get_encoder

    options = {k: v for k, v in {"pooling": pooling, "vocab": vocab}.items() if v is not None}
    return get_encoder(name, weights=weights, random_init=random_init, device=device, **options)


@command()
def encoders(as_json: JsonOpt = False) -> None:
    """List the encoders: dimension, input spec, where their weights were found, licence."""
    from embedstore.encoders import list_encoders

    rows = list_encoders()
    if as_json:
        emit(rows, True)
        return
    for r in rows:
        typer.echo(f"{r['name']:<11} dim {r['dim']:<4} {'+'.join(sorted(r['modalities'])):<10} weights: {r['weights']}")
        typer.echo(f"{'':<11} input: {json.dumps(r['spec'], sort_keys=True)}")
        typer.echo(f"{'':<11} licence: {r['licence']}")


@command()
def encode(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    weights: WeightsOpt = None,
    random_init: RandomOpt = False,
    target: Annotated[str, typer.Option(help="videos, or reports (text encoders)")] = "videos",
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="videos per model call"),
    workers: int = typer.Option(2, min=1, help="decode threads running ahead of the model"),
    device: DeviceOpt = "auto",
    pooling: PoolingOpt = None,
    vocab: VocabOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed every video (or report) not yet embedded by ENCODER; resumable, bad videos reported."""
    from embedstore.encode import encode_store
    from embedstore.store import open_store

    model = load_encoder(encoder, weights, random_init, device, pooling, vocab)
    with open_store(store) as st:
        summary = encode_store(st, model, batch_size=batch_size, workers=workers, target=target,
                               progress=not quiet)
    if as_json:
        emit(summary.as_dict(), True)
        return
    prov = summary.provenance
    typer.echo(f"encoded {summary.added} {target} with {encoder} ({summary.per_second:.2f}/s), "
               f"{summary.already} already done, {len(summary.failed)} failed")
    typer.echo(f"  weights: {prov['weights']} (sha256 {prov['weights_sha256'][:16]})")
    if prov["weights_sha256"] == "random-init":
        typer.echo("  WARNING: random-init weights: these vectors carry no learned meaning", err=True)
    for f in summary.failed:
        typer.echo(f"  failed: {f['error']}")


TargetOpt = Annotated[str, typer.Option("--target", help="videos, or reports (video->report retrieval)")]


@command("index")
def index_cmd(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    target: TargetOpt = "videos",
    factory: Annotated[Optional[str], typer.Option(help="FAISS factory string, e.g. HNSW32 (default: by size, see indexes/README.md)")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build the FAISS index of an encoder's vectors and measure its recall@10 against exact search."""
    from embedstore.index import build_index
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        side = build_index(st, encoder, target, factory=factory, progress=not quiet)
    if as_json:
        emit(side, True)
        return
    params = ", ".join(f"{k} {v}" for k, v in side["search_params"].items()) or "exact"
    typer.echo(f"index {encoder}.{target}: {side['factory']} ({side['choice']}), n {side['n']}, "
               f"recall@10 {side['recall_at_10']:.3f} ({params}), {side['build_seconds']:.1f} s")


@command("search")
def search_cmd(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    video: Annotated[Optional[Path], typer.Option("--video", help="query video file (AVI, MP4, DICOM)")] = None,
    id_: Annotated[Optional[str], typer.Option("--id", help="query by a stored video id")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="query text (text encoders)")] = None,
    report: Annotated[Optional[str], typer.Option("--report", help="report text or stored report id (text encoders)")] = None,
    vector: Annotated[Optional[Path], typer.Option("--vector", help=".npy file holding one query vector")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="number of neighbours")] = 10,
    target: TargetOpt = "videos",
    where: Annotated[Optional[str], typer.Option(help="DuckDB filter over the catalog, e.g. \"split = 'TEST' AND ef < 40\"")] = None,
    exclude_self: Annotated[bool, typer.Option("--exclude-self/--include-self", help="leave the --id video out")] = True,
    same_patient: Annotated[bool, typer.Option("--same-patient", help="one row per patient: best video and count")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Nearest neighbours of one query, with their catalog rows and the neighbours' EF estimate."""
    from embedstore.index.search import Searcher, read_vector_file
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        result = Searcher(st, encoder, target).search(
            video=video, id=id_, text=text, report=report, vector=read_vector_file(vector) if vector else None,
            k=k, where=where, exclude_self=exclude_self, same_patient=same_patient)
    if result.provenance["random_init"]:
        typer.echo(f"WARNING: {encoder} vectors are random-init: neighbours reflect pixels, not learned meaning", err=True)
    if as_json:
        emit(result.to_dict(), True)
        return
    _print_hits(result, target)


def _print_hits(result, target: str) -> None:
    if target == "reports":
        typer.echo(f"{'rank':>4}  {'id':<22} {'score':>7}  {'patient':<12} {'study':<16} text")
        for h in result.hits:
            m = h.metadata
            typer.echo(f"{h.rank:>4}  {h.id:<22} {h.score:>7.4f}  {m['patient_id'] or '-':<12} {m['study_id'] or '-':<16} "
                       f"{(m['text'] or '')[:60]}")
    else:
        typer.echo(f"{'rank':>4}  {'id':<22} {'score':>7}  {'patient':<12} {'EF':>5}  {'split':<5}  path")
        for h in result.hits:
            m = h.metadata
            ef = f"{m['ef']:.1f}" if m.get("ef") is not None else "-"
            count = f"  [{h.count} near]" if h.count is not None else ""
            typer.echo(f"{h.rank:>4}  {h.id:<22} {h.score:>7.4f}  {m['patient_id'] or '-':<12} {ef:>5}  "
                       f"{m['split'] or '-':<5}  {m['source_path'] or '-'}{count}")
    if result.filtered_out:
        typer.echo(f"filter removed {result.filtered_out} of {result.provenance['index']['n']} {target}")
    est = result.ef_estimate
    typer.echo(f"neighbour EF estimate: {est['mean']:.1f} ± {est['std']:.1f} (n={est['n']})" if est
               else "neighbour EF estimate: - (no EF labels among the neighbours)")


@command()
def similar(
    a: Annotated[str, typer.Argument(help="stored video id or video file")],
    b: Annotated[str, typer.Argument(help="stored video id or video file")],
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    as_json: JsonOpt = False,
) -> None:
    """Cosine of two videos and the same-patient probability calibrated on the store's labelled pairs."""
    from embedstore.index.similar import similar as run_similar
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        out = run_similar(st, encoder, a, b)
    if as_json:
        emit(out, True)
        return
    cal, p = out["calibration"], out["same_patient_probability"]
    typer.echo(f"cosine {out['cosine']:.4f}")
    typer.echo(f"same-patient probability {p:.3f} (logistic calibration on {cal['n_pairs']} labelled pairs, AUC {cal['auc']:.3f})"
               if p is not None else f"same-patient probability: - ({cal['method']})")
