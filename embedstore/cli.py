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
from embedstore.store.atomic import disk_full, no_space

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
            except Exception as exc:  # a full disk wherever it struck (writes are transactional or atomic)
                if not no_space(exc):
                    raise
                typer.echo(f"error: {disk_full('to the store').message}", err=True)
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


@command("phantom-dicom")
def phantom_dicom(
    out: Annotated[Path, typer.Argument(help="folder to write dicom/<patient>/<study>/ (and avi/) into")],
    patients: int = typer.Option(3, min=1, help="number of patients"),
    videos_per_patient: int = typer.Option(2, min=1, help="cines per patient (spread over studies)"),
    studies_per_patient: int = typer.Option(2, min=1, help="studies per patient, months apart"),
    frames: int = typer.Option(32, min=2, help="frames per cine (30 fps)"),
    seed: int = typer.Option(0, help="random seed"),
    avi: bool = typer.Option(False, "--avi", help="also write each screen as an AVI (no regions: the fan mask's case)"),
) -> None:
    """Write phantom cines as a scanner exports them: 480x640 DICOM screens with a burned-in name and date,
    an ECG trace and Ultrasound Regions (for testing the masking and DICOM study ingest)."""
    from embedstore.datasets.phantom_dicom import make_dicom_phantom

    info = make_dicom_phantom(out, patients=patients, videos_per_patient=videos_per_patient,
                              studies_per_patient=studies_per_patient, frames=frames, seed=seed, avi=avi)
    typer.echo(f"{len(info['files'])} DICOM cines of {info['patients']} patients, {info['studies']} studies in {info['dicom_dir']}")


@command()
def ingest(
    source: Annotated[Path, typer.Argument(help="EchoNet-style folder (FileList.csv + Videos/), a folder of videos, or one file")],
    store: StoreOpt = None,
    reports: Annotated[Optional[Path], typer.Option(help="reports.csv (report_id, study_id or video_id, text)")] = None,
    workers: int = typer.Option(2, min=1, help="decode threads"),
    mask: Annotated[Optional[bool], typer.Option("--mask/--no-mask", help="keep only the ultrasound image (DICOM regions, else the moving fan) wherever pixels leave the reader; the store's setting, on unless turned off here (e.g. EchoNet-Dynamic, whose text was removed)")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Register videos in a store (idempotent by content); bad files are skipped and listed."""
    from embedstore.datasets.ingest import ingest as run_ingest
    from embedstore.store import open_store

    with open_store(store, create=True) as st:
        summary = run_ingest(source, st, reports=reports, workers=workers, progress=not quiet,
                             mask=None if mask is None else ("on" if mask else "off"))
    if as_json:
        emit(summary.as_dict(), True)
        return
    typer.echo(f"added {summary.added}, unchanged {summary.unchanged}, labelled {summary.labelled}, "
               f"reports {summary.reports}, traced {summary.traced}, skipped {len(summary.skipped)}")
    for item, reason in summary.skipped:
        typer.echo(f"  skipped: {reason if item in reason else f'{item}: {reason}'}")
    for warning in summary.warnings:
        typer.echo(f"  warning: {warning}")


@command()
def info(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Counts per table, vector sets, indexes and size of a store; the FAISS build and GPUs in use."""
    from embedstore.devices import runtime
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        data = {**st.info(), "runtime": runtime()}
    if as_json:
        emit(data, True)
        return
    rt = data["runtime"]
    typer.echo(f"faiss {rt['faiss_version']} ({rt['faiss_build']} build, {rt['faiss_gpus']} GPUs); torch {rt['torch_version']} "
               f"(CUDA {'available: ' + ', '.join(rt['cuda_devices']) if rt['cuda_available'] else 'not available'})")
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
                 vocab: Path | None = None, precision: str | None = None):
    from embedstore.encoders import get_encoder

    options = {k: v for k, v in {"pooling": pooling, "vocab": vocab, "precision": precision}.items() if v is not None}
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
        typer.echo(f"{r['name']:<14} dim {r['dim']:<4} {'+'.join(sorted(r['modalities'])):<10} weights: {r['weights']}")
        typer.echo(f"{'':<14} looks for: {r['weights_file']}; precision: {r['precision']}")
        typer.echo(f"{'':<14} input scale: {r['input_scale']}; frames: {r['frames']}; resize: {r['resize']}")
        typer.echo(f"{'':<14} input: {json.dumps(r['spec'], sort_keys=True)}")
        typer.echo(f"{'':<14} licence: {r['licence']}")


@command()
def encode(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    weights: WeightsOpt = None,
    random_init: RandomOpt = False,
    target: Annotated[str, typer.Option(help="videos, or reports (text encoders)")] = "videos",
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="videos per model call"),
    workers: int = typer.Option(0, min=0, help="decode threads running ahead of the model (0: one per core but one, 2 to 8)"),
    device: DeviceOpt = "auto",
    pooling: PoolingOpt = None,
    vocab: VocabOpt = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32 or bf16 (autocast); default: the encoder's (r3d-v0 fp32, others bf16 on CUDA and fp32 on CPU); recorded in provenance")] = None,
    engine: Annotated[str, typer.Option(help="local (threads on this machine) or ray (a Ray cluster, docs/scaling.md)")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="ray: auto or ray://host:port (default: $RAY_ADDRESS, else start Ray here)")] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0, help="ray: GPUs per encoder actor when the cluster has GPUs (0: CPU actors)")] = 1.0,
    cpus_per_decode: Annotated[float, typer.Option("--cpus-per-decode", min=0.1, help="ray: CPUs per decode + prepare task")] = 1.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed every video (or report) not yet embedded by ENCODER; resumable, bad videos reported."""
    from embedstore.encode.engines import encode_with
    from embedstore.store import open_store

    # with ray the model runs in the actors; the driver's copy only gives provenance and the preparer
    model = load_encoder(encoder, weights, random_init, "cpu" if engine == "ray" else device, pooling, vocab, precision)
    with open_store(store) as st:
        summary = encode_with(engine, st, model, batch_size=batch_size, workers=workers or None, target=target,
                              progress=not quiet, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
                              cpus_per_decode=cpus_per_decode, device=device)
    if as_json:
        emit(summary.as_dict(), True)
        return
    prov = summary.provenance
    typer.echo(f"encoded {summary.added} {target} with {encoder} ({summary.per_second:.2f}/s), "
               f"{summary.already} already done, {len(summary.failed)} failed")
    typer.echo(f"  weights: {prov['weights']} (sha256 {prov['weights_sha256'][:16]})")
    if prov["weights_sha256"] == "random-init":
        typer.echo("  WARNING: random-init weights: these vectors carry no learned meaning", err=True)
    for warning in summary.warnings:
        typer.echo(f"  WARNING: {warning}", err=True)
    for f in summary.failed:
        typer.echo(f"  failed: {f['error']}")


TargetOpt = Annotated[str, typer.Option("--target", help="videos, reports (video->report retrieval), or studies (EchoPrime section vectors, `embedstore studies`)")]


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
    from embedstore.index.build import index_store
    from embedstore.store import open_store

    with open_store(store, read_only=True, write_derived=True) as st:
        side = index_store(st, encoder, target, factory=factory, progress=not quiet, recall_target=recall, center=center)
    if as_json:
        emit(side, True)
        return
    params = ", ".join(f"{k} {v}" for k, v in side["search_params"].items()) or "exact"
    typer.echo(f"index {encoder}.{target}{' (centred)' if side.get('centre') else ''}: {side['factory']} ({side['choice']}), n {side['n']}, "
               f"recall@10 {side['recall_at_10']:.3f} ({params}), {side['build_seconds']:.1f} s")
    if side.get("retuned"):
        typer.echo(f"  retuned to recall {side['recall_target']} along the measured curve: same vectors, no rebuild")


@command("search")
def search_cmd(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    video: Annotated[Optional[Path], typer.Option("--video", help="query video file (AVI, MP4, DICOM)")] = None,
    id_: Annotated[Optional[str], typer.Option("--id", help="query by a stored video id")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="query text (text encoders)")] = None,
    report: Annotated[Optional[str], typer.Option("--report", help="report text or stored report id (text encoders)")] = None,
    vector: Annotated[Optional[Path], typer.Option("--vector", help=".npy file holding one query vector")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="query by a stored study id (target studies)")] = None,
    section: Annotated[Optional[str], typer.Option("--section", help="with --study: EchoPrime report section (default Left Ventricle; 'All videos' for --pooling mean)")] = None,
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
        result = Searcher(st, encoder, target, with_estimate=True).search(
            video=video, id=id_, text=text, report=report, vector=read_vector_file(vector) if vector else None,
            study=study, section=section, k=k, where=where, exclude_self=exclude_self, same_patient=same_patient)
    if result.provenance["random_init"]:
        typer.echo(f"WARNING: {encoder} vectors are random-init: neighbours reflect pixels, not learned meaning", err=True)
    if as_json:
        emit(result.to_dict(), True)
        return
    _print_hits(result, target)


def _print_hits(result, target: str) -> None:
    if target == "studies":
        typer.echo(f"{'rank':>4}  {'study':<22} {'score':>7}  {'patient':<12} {'videos':>6}  section")
        for h in result.hits:
            m = h.metadata
            typer.echo(f"{h.rank:>4}  {m['study_id'] or '-':<22} {h.score:>7.4f}  {m['patient_id'] or '-':<12} "
                       f"{m['n_videos'] or 0:>6}  {m['section']}")
    elif target == "reports":
        typer.echo(f"{'rank':>4}  {'id':<22} {'score':>7}  {'patient':<12} {'study':<16} text")
        for h in result.hits:
            m = h.metadata
            typer.echo(f"{h.rank:>4}  {h.id:<22} {h.score:>7.4f}  {m['patient_id'] or '-':<12} {m['study_id'] or '-':<16} "
                       f"{(m['text'] or '')[:60]}")
    else:
        typer.echo(f"{'rank':>4}  {'id':<22} {'score':>7}  {'patient':<12} {'EF':>5}  {'split':<5}  {'view':<9}  path")
        for h in result.hits:
            m = h.metadata
            ef = f"{m['ef']:.1f}" if m.get("ef") is not None else "-"
            count = f"  [{h.count} near]" if h.count is not None else ""
            typer.echo(f"{h.rank:>4}  {h.id:<22} {h.score:>7.4f}  {m['patient_id'] or '-':<12} {ef:>5}  "
                       f"{m['split'] or '-':<5}  {m.get('view') or '-':<9}  {m['source_path'] or '-'}{count}")
    if result.filtered_out:
        typer.echo(f"filter removed {result.filtered_out} of {result.provenance['index']['n']} {target}")
    est = result.ef_estimate
    if result.query.get("note"):
        typer.echo(result.query["note"])
    typer.echo(f"neighbour EF estimate: {est['mean']:.1f} ± {est['std']:.1f} ({est['n']} labelled of the "
               f"{est['k']} nearest videos; left out {est['left_out']})" if est
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


@command()
def delete(
    store: StoreOpt = None,
    patient: Annotated[Optional[str], typer.Option(help="pseudonymised patient id, as the catalog shows it")] = None,
    study: Annotated[Optional[str], typer.Option(help="pseudonymised study id")] = None,
    video: Annotated[Optional[str], typer.Option(help="one video id")] = None,
    where: Annotated[Optional[str], typer.Option(help="DuckDB filter over the videos table, as `search --where`")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be erased; change nothing")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Erase a patient's (study's, video's) videos, reports, labels and vectors, from indexes and views too; logged without PHI."""
    from embedstore.store import open_store
    from embedstore.store.erase import erase

    with open_store(store) as st:
        out = erase(st, patient=patient, study=study, video=video, where=where, dry_run=dry_run)
    if as_json:
        emit(out, True)
        return
    c = out["counts"]
    typer.echo(f"{'would erase' if dry_run else 'erased'} {c['videos']} videos, {c['reports']} reports, {c['vectors']} vectors"
               + (f" (log {out['erasure_id']}; run `embedstore compact` to rewrite the files without their bytes)" if out["erasure_id"] else ""))


@command()
def compact(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """After `delete`: rewrite vectors.h5 densely and the catalog afresh (erased bytes leave the disk); rebuild renumbered indexes."""
    from embedstore.store import open_store
    from embedstore.store.compact import compact as run_compact

    with open_store(store) as st:
        out = run_compact(st)
    if as_json:
        emit(out, True)
        return
    typer.echo(f"vectors.h5: {out['rows_before']} rows -> {out['rows_after']}"
               + (f"; rebuilt the indexes of {', '.join(out['renumbered'])}" if out["renumbered"] else ""))


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
    accept_licence: Annotated[Optional[str], typer.Option("--accept-licence", help="who accepted the encoder's no-redistribution licence, and on what grounds (recorded in the bundle)")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a release bundle: vectors + metadata, manifest.json (sizes, sha256, provenance, licences), DATA_CARD.md."""
    from embedstore.datasets.export import export as run_export
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        manifest = run_export(st, encoder, out, fmt=fmt, splits=split.split(",") if split else None, target=target,
                              source=source_data, progress=not quiet, accept_licence=accept_licence)
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

    with open_store(store, read_only=True, write_derived=True) as st:
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


@command("search-batch")
def search_batch_cmd(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    ids: Annotated[Optional[str], typer.Option("--ids", help="stored video ids, comma-separated")] = None,
    vectors: Annotated[Optional[Path], typer.Option("--vectors", help=".npy file holding query vectors [N, D]")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="number of neighbours")] = 10,
    target: TargetOpt = "videos",
    where: Annotated[Optional[str], typer.Option(help="DuckDB filter over the catalog, e.g. \"split = 'TEST'\"")] = None,
    exclude_self: Annotated[bool, typer.Option("--exclude-self/--include-self", help="leave each --ids video out of its own answer")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Neighbours of many stored ids or vectors in one index call (REST: POST /search/batch)."""
    from embedstore.index.search import Searcher, read_vector_file
    from embedstore.store import open_store

    id_list = [i.strip() for i in ids.split(",") if i.strip()] if ids is not None else None
    with open_store(store, read_only=True) as st:
        results = Searcher(st, encoder, target).search_many(
            vectors=read_vector_file(vectors) if vectors else None, ids=id_list, k=k, where=where,
            exclude_self=exclude_self)
    if as_json:
        emit([r.to_dict() for r in results], True)
        return
    for number, result in enumerate(results, 1):
        typer.echo(f"query {number}: {result.query.get('id', 'vector')}")
        _print_hits(result, target)


@command("audit")
def audit_cmd(
    store: StoreOpt = None,
    encoder: EncoderOpt = "r3d",
    against: Annotated[Optional[Path], typer.Option("--against", help="another store encoded with the same encoder: overlap with it")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="near-duplicate cosine (default: chosen from the data, printed)")] = None,
    k: int = typer.Option(10, "-k", "--k", min=1, help="neighbours asked per vector (more where all k are near-duplicates)"),
    seed: int = typer.Option(0, help="seed of the samples and of the suggested re-split"),
    out: Annotated[Optional[Path], typer.Option("--out", help="also write the report to this file (markdown, or JSON with --json)")] = None,
    resplit: Annotated[Optional[Path], typer.Option("--resplit", help="write the suggested patient-grouped split here (CSV for `embedstore split --apply`)")] = None,
    fail_on: Annotated[Optional[str], typer.Option("--fail-on", help="exit 1 when any of these is found: patient,study,duplicate,near-duplicate")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Exact and near duplicates, patients and studies across splits, overlap with another store; a suggested re-split."""
    from embedstore.analysis.audit import audit, parse_kinds, to_markdown, write_split_csv
    from embedstore.store import open_store

    kinds = parse_kinds(fail_on)
    with open_store(store, read_only=True) as st:
        result = audit(st, encoder, against=against, threshold=threshold, k=k, seed=seed, progress=not quiet)
    text = json.dumps(result.report, indent=2, default=str) if as_json else to_markdown(result.report)
    if out is not None:
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    if resplit is not None:
        write_split_csv(result.resplit, resplit)
    typer.echo(text.rstrip("\n"))
    found = result.found(kinds)
    if found:
        typer.echo(f"audit found: {', '.join(found)} (--fail-on {','.join(kinds)})", err=True)
        raise typer.Exit(1)


@command("split")
def split_cmd(
    apply: Annotated[Path, typer.Option("--apply", help="CSV with video_id,split rows (e.g. from `embedstore audit --resplit`)")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the videos' TRAIN/VAL/TEST split from a CSV, all rows or none."""
    from embedstore.analysis.audit import apply_split
    from embedstore.store import open_store

    with open_store(store) as st:
        summary = apply_split(st, apply)
    if as_json:
        emit(summary, True)
        return
    typer.echo(f"split set for {summary['rows']} videos ({summary['changed']} changed): "
               + ", ".join(f"{k} {v}" for k, v in sorted(summary["by_split"].items())))
@command()
def views(
    store: StoreOpt = None,
    classifier: Annotated[str, typer.Option("--classifier", help="view classifier: echoprime (11 views)")] = "echoprime",
    model_data: Annotated[Optional[Path], typer.Option("--model-data", help="EchoPrime model_data folder or classifier file (else $EMBEDSTORE_WEIGHTS/echoprime/)")] = None,
    random_init: RandomOpt = False,
    all_videos: Annotated[bool, typer.Option("--all", help="classify videos that already have a view again")] = False,
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="videos per model call"),
    workers: int = typer.Option(2, min=1, help="decode threads running ahead of the model"),
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Classify each video's view (videos.view, videos.view_confidence); then --where "view = 'A4C'" filters by it."""
    from embedstore.encoders.views import classify_store
    from embedstore.store import open_store

    with open_store(store) as st:
        summary = classify_store(st, classifier, model_data=model_data, random_init=random_init, device=device,
                                 batch_size=batch_size, workers=workers, all_videos=all_videos, progress=not quiet)
    if as_json:
        emit(summary.as_dict(), True)
        return
    typer.echo(f"classified {summary.classified} videos ({classifier}), failed {len(summary.failed)}: "
               + (", ".join(f"{k} {v}" for k, v in summary.counts.items()) or "none"))
    for failure in summary.failed:
        typer.echo(f"  failed: {failure['item']}: {failure['error']}")


@command()
def studies(
    store: StoreOpt = None,
    encoder: EncoderOpt = "echoprime",
    mil_weights: Annotated[Optional[Path], typer.Option("--mil-weights", help="EchoPrime checkout folder or its assets/MIL_weights.csv (else $EMBEDSTORE_WEIGHTS/echoprime/)")] = None,
    pooling: Annotated[str, typer.Option("--pooling", help="echoprime (view-weighted per report section) or mean (one vector per study, e.g. PanEcho)")] = "echoprime",
    as_json: JsonOpt = False,
) -> None:
    """Study vectors per report section (view-weighted, normalised sums of the videos' vectors): target studies."""
    from embedstore.index.studies import build_study_vectors
    from embedstore.store import open_store

    with open_store(store) as st:
        summary = build_study_vectors(st, encoder, mil_weights, pooling)
    if as_json:
        emit(summary.as_dict(), True)
        return
    typer.echo(f"{summary.studies} studies: added {summary.added} {encoder} section vectors, {summary.already} already there"
               f" (weights {summary.mil_weights})")
    for reason, n in summary.left_out.items():
        typer.echo(f"  left out {n} videos: {reason}")
    typer.echo(f"  index them: embedstore index --store {store or '$EMBEDSTORE_HOME'} --encoder {encoder} --target studies")


@command()
def predict(
    study: Annotated[str, typer.Option("--study", help="stored study id (its section vectors: `embedstore studies`)")],
    store: StoreOpt = None,
    encoder: EncoderOpt = "echoprime",
    section: Annotated[Optional[str], typer.Option("--section", help="EchoPrime report section (default Left Ventricle; 'All videos' for --pooling mean)")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="neighbour studies")] = 50,
    bank: Annotated[Optional[Path], typer.Option("--bank", help="EchoPrime candidates_data folder (default: this store's own studies)")] = None,
    bank_cache: Annotated[Optional[Path], typer.Option("--bank-cache", help="folder for the one-off .npy of the bank's embeddings (default: beside them)")] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", help="label to predict (repeatable; default all)")] = None,
    phenotypes: Annotated[Optional[Path], typer.Option("--phenotypes", help="with --bank: EchoPrime's assets/section_to_phenotypes.pkl, each label from its own section's neighbours")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict a study's labels from its k nearest studies: nan-mean per label, the neighbours, an interval."""
    from embedstore.index.predict import predict as run_predict
    from embedstore.store import open_store

    with open_store(store, read_only=True) as st:
        out = run_predict(st, study, encoder, section, k, bank=bank, labels=label or None, cache=bank_cache,
                          phenotypes=phenotypes)
    if as_json:
        emit(out, True)
        return
    typer.echo(f"study {out['study_id']} ({out['section']}), {len(out['neighbours'])} neighbours from the {out['source']}:")
    for name, p in out["predictions"].items():
        typer.echo(f"  {name}: {p['mean']:.3f} (n={p['n']}, 95% of neighbours {p['interval'][0]:.3f}-{p['interval'][1]:.3f}"
                   f"{', section ' + p['section'] if 'section' in p else ''})" if p else f"  {name}: - (no neighbour has this label)")
    for nb in out["neighbours"][:10]:
        values = ", ".join(f"{n} {v:.3g}" for n, v in nb["labels"].items() if v is not None)
        typer.echo(f"    {nb['study_id']:<24} {nb['score']:.4f}  {values}")
    if len(out["neighbours"]) > 10:
        typer.echo(f"    ... {len(out['neighbours']) - 10} more (--json lists all)")
