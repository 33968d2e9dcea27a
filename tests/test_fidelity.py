"""Published procedures (shared/FACTS.md), each checked against values worked out by hand from FACTS.md.

Every expected number here is derived in a comment from the rule FACTS.md states, never from the
code's output; each test failed on the code before issue 17.
"""
from __future__ import annotations

import copy
import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from embedstore.analysis import evaluate
from embedstore.analysis import metrics as M
from embedstore.encoders import get_encoder
from embedstore.encoders.echoclip import EchoCLIPPreparer, zero_shot_binary
from embedstore.encoders.template_tokenizer import TemplateTokenizer
from embedstore.encoders.videomae import VideoMAEPreparer
from embedstore.store import open_store
from embedstore.video.read import Video

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path) -> Path:
    """No weights anywhere but where a test puts them."""
    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setenv("EMBEDSTORE_WEIGHTS", str(root))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("EMBEDSTORE_ECHOCLIP_R_VOCAB", raising=False)
    return root


def clip_of(frames: np.ndarray) -> Video:
    return Video(np.ascontiguousarray(frames, dtype=np.uint8), 50.0, "avi")


# --- item 3: EchoCLIP-R tokenizer ----------------------------------------------------------------
# A 4-phrase vocabulary in the published format (one phrase a line, each ending with one space):
#   phrase id = 5 + line index -> 5, 6, 7, 8; value offset = 5 + 4 = 9;
#   value "n" (0..100) has VARIABLE_VOCAB index 5 + n -> id 14 + n ("55" -> 69, "21" -> 35, "3" -> 17);
#   BOS = 9 + 132 = 141, EOS = 142.
VOCAB = [
    "LV EJECTION FRACTION IS <#>%. ",
    "THE INFERIOR VENA CAVA SHOWS A NORMAL RESPIRATORY COLLAPSE CONSISTENT WITH NORMAL RIGHT ATRIAL PRESSURE (<#>MMHG). ",
    "RESTING SEGMENTAL WALL MOTION ANALYSIS. ",
    "THE IVC DIAMETER IS <#>MM. ",
]
BOS, EOS = 141, 142


@pytest.fixture()
def tok(tmp_path) -> TemplateTokenizer:
    path = tmp_path / "template_vocab.txt"
    path.write_text("".join(line + "\n" for line in VOCAB), encoding="utf-8")
    return TemplateTokenizer(path)


@pytest.mark.parametrize("report, expected", [
    # period insertion: "...IS 55% " gets "." after the % -> "...IS <#>%. " = phrase 5, value 55
    ("LV ejection fraction is 55%", [BOS, 5, 69, EOS]),
    ("LV ejection fraction is 55%.", [BOS, 5, 69, EOS]),  # already followed by "." : unchanged
    # "21 mm" -> "21MM" (no space before MM), then "." appended -> phrase 8, value 21
    ("The IVC diameter is 21 mm", [BOS, 8, 35, EOS]),
    # the IVC rewrite after <#>: the long sentence becomes the vocabulary's phrase 6, value 3
    ("The inferior vena cava is normal in size and shows a normal respiratory collapse, consistent with normal "
     "right atrial pressure (3 mmHg).", [BOS, 6, 17, EOS]),
    # "ANALYSIS:" gets "." -> "ANALYSIS.:" -> rewritten "ANALYSIS." = phrase 7; then phrase 8 with 21
    ("Resting segmental wall motion analysis: the IVC diameter is 21 mm", [BOS, 7, 8, 35, EOS]),
])
def test_template_tokenizer_period_insertion_and_rewrites(tok, report, expected):
    row = tok([report])[0].tolist()
    assert row[: len(expected)] == expected and row[len(expected):] == [0] * (77 - len(expected))


# --- item 4: EchoCLIP's resize kernel and crop ------------------------------------------------------
def test_echoclip_resize_is_opencv_inter_cubic():
    """10x10 frame -> square crop (10x10) -> trim int(10 x 0.1) = 1 per side -> 8x8, whose columns are
    [0, 0, 0, 255, 0, 0, 0, 0] -> 4x4 with the a = -0.75 cubic kernel, no antialiasing.
    Output column i samples source x = 2i + 0.5: taps x-1..x+2 at distances 1.5, 0.5, 0.5, 1.5 with
    weights W(1.5) = -0.75(3.375) + 3.75(2.25) - 6(1.5) + 3 = -0.09375 and
    W(0.5) = 1.25(0.125) - 2.25(0.25) + 1 = 0.59375 (borders replicate):
      i=0: taps -1,0,1,2 -> 0;  i=1: taps 1,2,3,4 -> 0.59375 x 255 = 151.4 -> 151;
      i=2: taps 3,4,5,6 -> -0.09375 x 255 < 0 -> 0;  i=3 -> 0.  Rows are constant, so every row is the same."""
    frame = np.zeros((10, 10, 3), np.uint8)
    frame[:, 4] = 255  # column 4 of the 10: column 3 of the central 8
    out = EchoCLIPPreparer((4, 4))(clip_of(frame[None]))
    assert out.shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(out[0], np.broadcast_to(np.array([0, 151, 0, 0], np.uint8), (3, 4, 4)))


def test_echoclip_trim_is_truncated_not_rounded():
    """116 px: int(116 x 0.1) = int(11.6) = 11 off each side (rounding would take 12), so 94 px stay:
    frames[11:105]."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 116, 116, 3), dtype=np.uint8)
    out = EchoCLIPPreparer((94, 94))(clip_of(frames))  # 94 = no resize: the crop itself comes out
    np.testing.assert_array_equal(out, frames[:, 11:105, 11:105].transpose(0, 3, 1, 2))


# --- item 9: VideoMAE frame indices -----------------------------------------------------------------
def test_videomae_frames_are_linspace_truncated():
    """20 frames, 16 samples: k x 19/15 for k = 0..15 = 0, 1.27, 2.53, 3.8, 5.07, 6.33, 7.6, 8.87, 10.13,
    11.4, 12.67, 13.93, 15.2, 16.47, 17.73, 19, truncated toward zero."""
    frames = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    out = VideoMAEPreparer(16, 8)(clip_of(frames))  # 8 px in, 8 px out: no resize, pixel = frame index
    assert out[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 19]


# --- items 1, 2: R3D input scale and default weights --------------------------------------------------
@pytest.fixture(scope="module")
def r3d_net(tmp_path_factory):
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    net = r3d_18(weights=None).eval()
    out = tmp_path_factory.mktemp("r3d")
    wrapper = torch.nn.Module()
    wrapper.preloaded_model, wrapper.new_layer1 = net, torch.nn.Linear(400, 1)
    torch.save(wrapper.state_dict(), out / "r3d_binary_111723.pt")
    torch.save(net.state_dict(), out / "r3d_18-b3b3357e.pth")
    return net, out


def by_hand(net, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        y = net(x)
    return (y / y.norm(dim=-1, keepdim=True)).numpy()


def test_r3d_feeds_each_checkpoint_the_scale_it_was_trained_with(r3d_net):
    """FACTS.md R3D: the released (wrapper) checkpoint gets raw 0-255 floats, (1, C, T, H, W), no mean/std;
    torchvision's Kinetics file gets Kinetics mean/std on 0-1."""
    net, folder = r3d_net
    frames = np.random.default_rng(1).integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    raw = torch.from_numpy(frames[::4]).permute(3, 0, 1, 2)[None].float()  # paper preset: 1 frame in 4
    released = get_encoder("r3d", weights=folder / "r3d_binary_111723.pt", device="cpu")
    np.testing.assert_allclose(released.embed_videos([clip_of(frames)]), by_hand(net, raw), atol=1e-4)
    mean = torch.tensor([0.43216, 0.394666, 0.37645]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.22803, 0.22145, 0.216989]).view(1, 3, 1, 1, 1)
    kinetics = get_encoder("r3d", weights=folder / "r3d_18-b3b3357e.pth", device="cpu")
    np.testing.assert_allclose(kinetics.embed_videos([clip_of(frames)]), by_hand(net, (raw / 255 - mean) / std), atol=1e-4)
    assert released.provenance()["preprocessing"]["input_scale"] == "0-255"
    assert kinetics.provenance()["preprocessing"]["input_scale"] == "kinetics"


def test_trained_checkpoint_records_its_scale(r3d_net, tmp_path):
    from embedstore.training import checkpoint
    from embedstore.training.model import R3DClassifier

    net, _ = r3d_net
    out = tmp_path / "tuned.pt"
    checkpoint.save_weights(R3DClassifier(copy.deepcopy(net)), out, "0-255")
    assert torch.load(out, weights_only=True)["input_scale"] == "0-255"
    tuned = get_encoder("r3d", weights=out, device="cpu")
    assert tuned.spec["input_scale"] == "0-255" and tuned.spec["mean"] is None


def test_r3d_default_weights_are_the_released_checkpoint(r3d_net, offline):
    """r3d_o_sp4.pt was a deleted experiment: with both files installed, the released one is used."""
    _, folder = r3d_net
    for name in ("r3d", "r3d-v0"):
        (offline / name).mkdir()
        shutil.copy(folder / "r3d_binary_111723.pt", offline / name / "r3d_binary_111723.pt")
        shutil.copy(folder / "r3d_18-b3b3357e.pth", offline / name / "r3d_o_sp4.pt")
        assert get_encoder(name, device="cpu").provenance()["weights"].endswith("r3d_binary_111723.pt")


# --- item 5: summed accumulation loss --------------------------------------------------------------
def test_accumulated_gradient_is_the_sum_of_the_videos_losses(tmp_path):
    """FACTS.md: the 20 losses of an accumulation window are summed, not averaged: after two videos of a
    window the gradient is d(loss_a + loss_b)/dw (raw 0-255 input, as the authors train)."""
    from embedstore.training.config import TrainConfig
    from embedstore.training.data import Example
    from embedstore.training.loop import Trainer

    trainer = Trainer(TrainConfig(init="random", accumulate=2, device="cpu"), tmp_path / "out.pt", False, None)
    reference = copy.deepcopy(trainer.model)
    rng = np.random.default_rng(3)
    xs = [rng.integers(0, 256, (3, 4, 32, 32), dtype=np.uint8) for _ in range(2)]
    examples = [Example("a", "a.avi", 1.0), Example("b", "b.avi", 0.0)]
    for example, x in zip(examples, xs):
        trainer._backward([(example, x)])
    total = sum(torch.nn.functional.binary_cross_entropy_with_logits(
        reference(torch.from_numpy(x)[None].float()), torch.tensor([e.label])) for e, x in zip(examples, xs))
    total.backward()
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


# --- item 6: the classification threshold ------------------------------------------------------------
def test_threshold_maximises_val_accuracy():
    """Positives score 0.6, 0.3; negatives 0.1, 0.2, 0.4, 0.5, 0.05, 0.15 (positive when score >= t):
    t = 0.6: TP 1, TN 6 -> accuracy 7/8 (the maximum); t = 0.5: 6/8; t = 0.3: TP 2, FP 2 -> 6/8.
    Youden's J is largest at 0.3 (1 - 2/6 = 0.67 > 0.5 at 0.6): the two rules differ."""
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    scores = np.array([0.6, 0.3, 0.1, 0.2, 0.4, 0.5, 0.05, 0.15])
    assert M.accuracy_threshold(labels, scores) == 0.6
    assert M.youden_threshold(labels, scores) == 0.3


# --- item 7: MCMRR, one random video per study ------------------------------------------------------
def test_mcmrr_takes_one_video_per_study(tmp_path):
    """Study S1: two videos at (0.6, 0.8), report R1 at (1, 0); S2: two videos at (0.8, 0.6), R2 at (0, 1).
    Paper (one image per study, whichever is drawn): image S1 scores R1 0.6 < R2 0.8 -> rank 2, S2 the same;
    R1 scores image S1 0.6 < S2 0.8 -> rank 2, R2 the same: MCMRR (2 + 2) / 2 = 2.
    Every-video protocol: videos rank 2 each; R1 has both S2 videos above -> rank 3, R2 too: (2 + 3) / 2 = 2.5."""
    prov = {"encoder": "toy", "dim": 2, "weights": "random-init", "weights_sha256": "random-init",
            "preprocessing": {}, "package_version": "test", "modalities": ["text", "video"]}
    with open_store(tmp_path / "s", create=True) as store:
        store.add_videos([{"video_id": f"S{s}V{v}", "study_id": f"S{s}", "patient_id": f"P{s}"}
                          for s in (1, 2) for v in (1, 2)])
        store.add_reports([{"report_id": f"R{s}", "study_id": f"S{s}", "text": f"report {s}"} for s in (1, 2)])
        store.add_vectors(prov, ["S1V1", "S1V2", "S2V1", "S2V2"], np.array([[0.6, 0.8]] * 2 + [[0.8, 0.6]] * 2))
        store.add_vectors(prov, ["R1", "R2"], np.array([[1.0, 0.0], [0.0, 1.0]]), target="reports")
        task = evaluate(store, "toy", bootstrap=0, tasks=["retrieval"])["tasks"]["retrieval"]
    m = task["metrics"]
    assert (m["video_to_report_mean_rank"], m["report_to_video_mean_rank"], m["mcmrr"]) == (2, 2, 2)
    assert (m["every_video_report_to_video_mean_rank"], m["every_video_mcmrr"]) == (3, 2.5)
    assert task["details"]["studies"] == 2 and "one random video per study" in task["details"]["protocol"]


# --- item 8: zero-shot binary score -----------------------------------------------------------------
def test_zero_shot_binary_is_the_mean_cosine_over_prompts_and_frames(monkeypatch):
    """Frames 0 and 2 of a 4-frame video (0..min(40, N) stride 2) at (1, 0) and (0, 1); prompts at (1, 0)
    and (0.6, 0.8): cosines 1, 0.6, 0, 0.8 -> mean 0.6."""
    enc = get_encoder("echoclip", random_init=True, model_cfg=TINY_CLIP, device="cpu")
    seen = {}

    def frames(prepared):
        seen["n"] = len(prepared)
        return np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)

    monkeypatch.setattr(enc, "embed_frames", frames)
    monkeypatch.setattr(enc, "embed_texts", lambda prompts: np.array([[1.0, 0.0], [0.6, 0.8]], np.float32))
    video = clip_of(np.zeros((4, 32, 32, 3)))
    np.testing.assert_allclose(zero_shot_binary(enc, [video], ["A", "B"]), [0.6], atol=1e-6)
    assert seen["n"] == 2


# --- items 10 + VolumeTracings: ingest keeps decoded values; tracings imported ------------------------
def test_ingest_keeps_decoded_values_and_imports_tracings(tmp_path):
    from embedstore.datasets.ingest import ingest
    from embedstore.datasets.phantom import make_phantom

    cohort = make_phantom(tmp_path / "echonet", patients=2, videos_per_patient=1, frames=24, size=32)
    filelist = cohort["file_list"]
    rows = list(csv.DictReader(filelist.open()))
    rows[0]["FrameHeight"], rows[0]["FrameWidth"], rows[0]["NumberOfFrames"] = "768", "1024", "999"
    with filelist.open("w", newline="") as fh:  # an EchoNet-like row that claims another size
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    traced: dict[str, dict[int, list]] = {}
    for rec in csv.DictReader(cohort["volume_tracings"].open()):
        traced.setdefault(rec["FileName"].removesuffix(".avi"), {}).setdefault(int(rec["Frame"]), []).append(
            [float(rec[c]) for c in ("X1", "Y1", "X2", "Y2")])

    def disks(trace):  # method of disks (pixels): L x sum(pi (d/2)^2) / n, long axis first
        (x1, y1, x2, y2), chords = trace[0], trace[1:]
        return math.hypot(x2 - x1, y2 - y1) * sum(math.pi * math.hypot(c[2] - c[0], c[3] - c[1]) ** 2 / 4
                                                 for c in chords) / len(chords)

    with open_store(tmp_path / "store", create=True) as store:
        summary = ingest(cohort["root"], store, progress=False)
        assert summary.traced == 2
        first = rows[0]["FileName"]
        video = {r["video_id"]: r for r in store.videos()}[first]
        assert (video["height"], video["width"], video["n_frames"]) == (32, 32, 24)  # what the file says
        assert store.catalog.declared(first) == {"fps": 50.0, "n_frames": 999, "height": 768, "width": 1024}
        for row in rows:
            tracing = store.catalog.tracing(row["FileName"])
            es, ed = list(traced[row["FileName"]])  # the phantom writes ES rows first, then ED
            assert (tracing["ed_frame"], tracing["es_frame"]) == (ed, es)
            assert tracing["ed"] == traced[row["FileName"]][ed] and tracing["es"] == traced[row["FileName"]][es]
            ef = 100 * (disks(tracing["ed"]) - disks(tracing["es"])) / disks(tracing["ed"])
            assert ef == pytest.approx(float(row["EF"]), abs=0.05)


# --- items 11, 12: search label estimate and k ----------------------------------------------------------
def test_search_estimate_leaves_out_the_query_patient_and_k_past_the_store(tmp_path):
    """30 videos v00000..v00029, patient p{i // 3}, EF 10 + i: the estimate of v00004 (patient p1: v3, v4, v5)
    uses the 50 nearest others outside p1 = all 27 others: EF 10..39 without 13, 14, 15 -> mean 693 / 27."""
    from embedstore.index import Searcher, build_index
    from tests.test_index import make_store

    store, ids, _ = make_store(tmp_path / "s", 30)
    build_index(store, "toy", progress=False)
    result = Searcher(store, "toy").search_id("v00004", k=100)
    assert len(result.hits) == 29 and "only 29" in result.query["note"]
    efs = [10.0 + i for i in range(30) if i not in (3, 4, 5)]
    assert result.ef_estimate["mean"] == round(693 / 27, 2) and result.ef_estimate["n"] == 27
    assert result.ef_estimate["std"] == round(float(np.std(efs)), 2) and result.ef_estimate["k"] == 50
    assert len(Searcher(store, "toy").search_id("v00004", k=3).hits) == 3  # the estimate's k is its own
    store.close()


def test_echoclip_r_zero_shot_prompts_are_sampled_reports_per_ef_value(tmp_path):
    """FACTS.md: for EchoCLIP-R, about 10 sampled report texts per EF value are the prompts. 12 non-TEST videos
    at EF 40.2 (-> 40) with a report each give 10 of them; 2 TEST videos at EF 40 give none (no leak); a
    study report whose videos are at EF 60 and 62 takes their mean, 61."""
    from embedstore.analysis.evaluate import load_data, report_prompts

    videos = [{"video_id": f"a{i:02d}", "ef": 40.2, "split": "TRAIN" if i % 2 else "VAL"} for i in range(12)]
    videos += [{"video_id": f"t{i}", "ef": 40.0, "split": "TEST"} for i in range(2)]
    videos += [{"video_id": f"s{i}", "ef": 60.0 + 2 * i, "split": "VAL", "study_id": "S"} for i in range(2)]
    reports = [{"report_id": f"r-{v['video_id']}", "video_id": v["video_id"], "text": f"text {v['video_id']}"}
               for v in videos if v["video_id"][0] in "at"]
    reports.append({"report_id": "r-S", "study_id": "S", "text": "study text"})
    prov = {"encoder": "toy", "dim": 2, "weights": "random-init", "weights_sha256": "random-init",
            "preprocessing": {}, "package_version": "test", "modalities": ["text", "video"]}
    with open_store(tmp_path / "s", create=True) as store:
        store.add_videos(videos)
        store.add_reports(reports)
        store.add_vectors(prov, [v["video_id"] for v in videos], np.ones((len(videos), 2)))
        data, _ = load_data(store, "toy", 0, 0)
        prompts, values = report_prompts(data)
    assert values.tolist() == [40.0] * 10 + [61.0]
    assert prompts[-1] == "study text" and len(set(prompts[:10])) == 10
    assert all(p.startswith("text a") for p in prompts[:10])
