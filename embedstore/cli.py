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
    frames: int = typer.Option(128, min=8, help="frames per video (50 fps unless --fps-spread)"),
    seed: int = typer.Option(0, help="random seed; the cohort is deterministic for a seed"),
    size: int = typer.Option(112, help="frame height and width in pixels (even, 32-1024)"),
    fps_spread: Annotated[bool, typer.Option("--fps-spread", help="EchoNet-like frame rates: most 50 fps, the rest 30-100")] = False,
) -> None:
    """Write a synthetic EchoNet-Dynamic-shaped cohort (AVI videos, FileList.csv, tracings, reports)."""
    from embedstore.datasets.phantom import make_phantom

    summary = make_phantom(out, patients=patients, videos_per_patient=videos_per_patient,
                           studies_per_patient=studies_per_patient, seed=seed, frames=frames, size=size,
                           fps_spread=fps_spread)
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
    engine: Annotated[str, typer.Option(help="local (threads on this machine) or ray (a Ray cluster, docs/scaling.md)")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="ray: auto or ray://host:port (default: $RAY_ADDRESS, else start Ray here)")] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0, help="ray: GPUs per encoder actor when the cluster has GPUs (0: CPU actors)")] = 1.0,
    cpus_per_decode: Annotated[float, typer.Option("--cpus-per-decode", min=0.1, help="ray: CPUs per decode + prepare task")] = 1.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed every video (or report) not yet embedded by ENCODER; resumable, bad videos reported."""
    from embedstore.engines import encode_with
    from embedstore.store import open_store

    # with ray the model runs in the actors; the driver's copy only gives provenance and the preparer
    model = load_encoder(encoder, weights, random_init, "cpu" if engine == "ray" else device, pooling, vocab)
    with open_store(store) as st:
        summary = encode_with(engine, st, model, batch_size=batch_size, workers=workers, target=target,
                              progress=not quiet, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
                              cpus_per_decode=cpus_per_decode)
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
    recall: Annotated[float, typer.Option(min=0.0, max=1.0, help="recall@10 the search parameters (efSearch, nprobe) are tuned to")] = 0.95,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    center: Annotated[bool, typer.Option("--center", help="remove the vector set's mean before indexing and from every query (see `embedstore leaderboard`)")] = False,
) -> None:
    """Build the FAISS index of an encoder's vectors and measure its recall@10 against exact search."""
    from embedstore.index import build_index
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        side = build_index(st, encoder, target, factory=factory, progress=not quiet, recall_target=recall, center=center)
    if as_json:
        emit(side, True)
        return
    params = ", ".join(f"{k} {v}" for k, v in side["search_params"].items()) or "exact"
    typer.echo(f"index {encoder}.{target}{' (centred)' if side.get('centre') else ''}: {side['factory']} ({side['choice']}), n {side['n']}, "
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


from enum import Enum  # noqa: E402  (appended section: `train`)

from embedstore.training.config import TrainConfig  # noqa: E402  (torch-free: the recipe's defaults)

_RECIPE = TrainConfig()


class TrainModel(str, Enum):
    r3d = "r3d"


@command()
def train(
    model: Annotated[TrainModel, typer.Argument(help="model to fine-tune: r3d (R3D-18 as an EF classifier, the R3D paper's recipe)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="final checkpoint (released wrapper layout); OUT.epoch<N> and the .metrics.json go beside it")],
    store: StoreOpt = None,
    label: Annotated[str, typer.Option(help="DuckDB yes/no expression over the videos table: the positive class")] = _RECIPE.label,
    epochs: Annotated[int, typer.Option(help="epochs (the best by VAL AUC is kept)")] = _RECIPE.epochs,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = _RECIPE.lr,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay")] = _RECIPE.weight_decay,
    accumulate: Annotated[int, typer.Option(help="batches per optimizer step (gradient accumulation)")] = _RECIPE.accumulate,
    period: Annotated[int, typer.Option(help="keep 1 frame in PERIOD (`encode --encoder r3d` uses 4)")] = _RECIPE.period,
    init: Annotated[str, typer.Option(help="kinetics (torch hub cache), random (recorded), or an r3d checkpoint path")] = _RECIPE.init,
    balance: Annotated[str, typer.Option(help="none, oversample or undersample (TRAIN classes, per epoch)")] = _RECIPE.balance,
    batch_size: Annotated[int, typer.Option("--batch-size", help="videos per batch (unequal lengths are not mixed)")] = _RECIPE.batch_size,
    clip_length: Annotated[Optional[int], typer.Option(help="train on random clips of this many sampled frames (speed); default whole videos")] = None,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option(help="seed of init, order, balance draws and clips")] = _RECIPE.seed,
    workers: int = typer.Option(_RECIPE.workers, help="decode threads running ahead of the model"),
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest OUT.epoch<N> (same settings)")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune on TRAIN, pick the epoch on VAL, report TEST; save a checkpoint `encode --weights` loads."""
    from embedstore.store import open_store
    from embedstore.training.loop import train_r3d

    cfg = TrainConfig(label=label, epochs=epochs, lr=lr, weight_decay=weight_decay, accumulate=accumulate, period=period,
                      init=init, balance=balance, batch_size=batch_size, clip_length=clip_length, seed=seed,
                      device=device, workers=workers)
    if init == "random":
        typer.echo("WARNING: --init random: no Kinetics start (recorded); the paper fine-tunes from Kinetics-400", err=True)
    with open_store(store) as st:
        metrics = train_r3d(st, cfg, out, resume=resume, progress=not quiet)
    if as_json:
        emit(metrics, True)
        return
    counts, val, test = metrics["counts"], metrics["val"], metrics["test"]
    typer.echo(f"trained {model.value} on {counts['TRAIN']['n']} TRAIN videos (label {label!r}), {epochs} epochs on "
               f"{metrics['device']} ({metrics['precision']}); best epoch {metrics['best_epoch']}, VAL AUC {val['auc']}")
    if test:
        names = ("auc", "auprc", "accuracy", "precision", "recall", "specificity", "f1")
        typer.echo(f"TEST ({test['n']} videos, {test['positive']} positive; threshold {test['threshold']} on the sigmoid): "
                   + ", ".join(f"{k} {test[k]}" for k in names))
    else:
        typer.echo("TEST: no TEST videos with a label value; no test metrics")
    typer.echo(f"checkpoint {out} (sha256 {metrics['checkpoint_sha256'][:16]}); metrics {metrics['metrics_file']}")
    typer.echo(f"  embed with it: embedstore encode --store STORE --encoder r3d --weights {out}")


@command()
def download(
    source: Annotated[str, typer.Argument(help="release name (r3d-v0), URL of a bundle's manifest.json, or URL of an R3D-v0-format text file")],
    store: StoreOpt = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="expected sha256 of the file (of manifest.json for a bundle)")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="EchoNet FileList.csv: joins EF, ESV, EDV, split (and PatientID)")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="download folder (default <store>/downloads)")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download released embeddings, verify them, and ingest them as a vector set of videos known by id."""
    from embedstore.datasets.releases import download as run_download

    summary = run_download(source, store, sha256=sha256, labels=labels, cache=cache, progress=not quiet)
    if as_json:
        emit(summary, True)
        return
    typer.echo(f"{summary['release']}: {summary['n']} x {summary['dim']} {summary['encoder']} vectors from {summary['url']}")
    typer.echo(f"  sha256 {summary['sha256']} ({summary['sha256_pinned_by']})")
    typer.echo(f"  added {summary['added']} vectors, {summary['new_items']} new {summary['target']}, "
               f"{summary['labelled']} labelled from --labels")


@command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="new folder for the bundle")],
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    fmt: Annotated[str, typer.Option("--format", help="hdf5 (the store's layout) or parquet (shards)")] = "hdf5",
    split: Annotated[Optional[str], typer.Option("--split", help="keep these splits, e.g. TRAIN,VAL")] = None,
    target: TargetOpt = "videos",
    source_data: Annotated[Optional[str], typer.Option("--source-data", help="echonet, phantom or own (default: the release's, else echonet when ids look like EchoNet FileNames, else own)")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a release bundle: vectors + metadata, manifest.json (sizes, sha256, provenance, licences), DATA_CARD.md."""
    from embedstore.datasets.export import export as run_export
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        manifest = run_export(st, encoder, out, fmt=fmt, splits=split.split(",") if split else None, target=target,
                              source=source_data, progress=not quiet)
    if as_json:
        emit(manifest, True)
        return
    typer.echo(f"bundle {out}: {manifest['count']} x {manifest['dim']} {encoder} {target} ({fmt}), "
               f"{len(manifest['files'])} files + manifest.json")
    typer.echo(f"  source data: {manifest['licence']['source']}; weights licence: {manifest['licence']['weights']}")
    if manifest["encoder"]["weights_sha256"] == "random-init":
        typer.echo("  WARNING: random-init weights: these vectors carry no learned meaning", err=True)


@command("view")
def view_cmd(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    method: Annotated[str, typer.Option("--method", help="pca or umap")] = "umap",
    color: Annotated[str, typer.Option("--color", help="ef, split, patient, or any videos column")] = "ef",
    out: Annotated[Optional[Path], typer.Option("--out", help="PNG file (default: the store's views/<encoder>.<method>.png)")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="interactive HTML file (default: next to the PNG in views/)")] = None,
    seed: int = typer.Option(0, help="UMAP random state; the map is deterministic for a seed"),
    recompute: bool = typer.Option(False, "--recompute", help="recompute even when a stored view matches"),
    as_json: JsonOpt = False,
) -> None:
    """2-D map (PCA or UMAP) of an encoder's vectors: stored in views/, drawn as PNG and interactive HTML."""
    from embedstore.analysis.views import make_view
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        out_info = make_view(st, encoder, method, color=color, png=out, html=html, seed=seed, recompute=recompute)
    if out_info["random_init"]:
        typer.echo(f"WARNING: {encoder} vectors are random-init: the map shows a random network's view", err=True)
    if as_json:
        emit(out_info, True)
        return
    typer.echo(f"{method} view of {out_info['n']} {encoder} vectors (seed {seed}): {out_info['view']}")
    typer.echo(f"  png  {out_info['png']}\n  html {out_info['html']}")


@command("eval")
def eval_cmd(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    out: Annotated[Optional[Path], typer.Option("--out", help="also write the report to this file (markdown, or JSON with --json)")] = None,
    bootstrap: int = typer.Option(1000, min=0, help="bootstrap resamples for the 95% intervals (0: none)"),
    seed: int = typer.Option(0, help="seed of the bootstrap, the pair sample and a split made when the store has none"),
    tasks: Annotated[Optional[str], typer.Option(help="comma-separated tasks to run (default all): ef_probe, "
                                                      "ef_regression, knn_ef, neighbour_ef_class, same_patient, "
                                                      "retrieval, zero_shot_ef")] = None,
    as_json: JsonOpt = False,
    all_sets: Annotated[bool, typer.Option("--all", help="every vector set beside the pixel baseline: `embedstore leaderboard`")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Linear probe, ridge and kNN EF, neighbours' EF class, same-patient AUC, report retrieval, zero-shot EF: where labels exist."""
    from embedstore.analysis.evaluate import evaluate, to_markdown
    from embedstore.store import open_store

    if all_sets:
        return leaderboard_cmd(store=store, out=out, bootstrap=bootstrap, seed=seed, as_json=as_json, quiet=quiet)

    with open_store(store, read_only=True) as st:
        report = evaluate(st, encoder, bootstrap=bootstrap, seed=seed,
                          tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None)
    if report["warning"] and as_json:
        typer.echo(report["warning"], err=True)
    text = json.dumps(report, indent=2, allow_nan=False) if as_json else to_markdown(report)
    if out is not None:
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    typer.echo(text.rstrip("\n"))


@command("leaderboard")
def leaderboard_cmd(
    store: StoreOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="also write the table to this file (markdown, or JSON with --json)")] = None,
    bootstrap: int = typer.Option(1000, min=0, help="bootstrap resamples for the 95% intervals (0: none)"),
    seed: int = typer.Option(0, help="seed of the bootstrap, the pair sample and a split made when the store has none"),
    raw_only: Annotated[bool, typer.Option("--raw-only", help="leave out the centred rows")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Every vector set (raw and centred) beside the pixel baseline: the same tasks, splits and resamples, with differences."""
    from embedstore.analysis.leaderboard import leaderboard, to_markdown
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        report = leaderboard(st, bootstrap=bootstrap, seed=seed, centred=not raw_only, progress=not quiet)
    text = json.dumps(report, indent=2, allow_nan=False) if as_json else to_markdown(report)
    if out is not None:
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    typer.echo(text.rstrip("\n"))


@command()
def serve(
    store: StoreOpt = None,
    host: Annotated[Optional[str], typer.Option(help="bind address (default 127.0.0.1 or $EMBEDSTORE_HOST); "
                                                     "the service has no TLS, expose it only behind a proxy")] = None,
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    workers: int = typer.Option(1, min=1, help="server processes, each with its own copy of the indexes"),
    log_level: str = typer.Option("info", help="uvicorn log level; warning and above leave out the access log"),
) -> None:
    """REST service over a store, read-only (OpenAPI at /docs); limits and token from EMBEDSTORE_* variables."""
    from embedstore.service.app import serve as run_server

    run_server(store, host, port, workers, log_level)
