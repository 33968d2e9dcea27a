"""View classification with EchoPrime's classifier: torchvision convnext_base, 11 views, frame 0 of the
EchoPrime-prepared clip (normalised with EchoPrime's mean/std), softmax confidence of the top view.

Weights, in either released layout, from the EchoPrime model_data folder the user gives (or
$EMBEDSTORE_WEIGHTS/echoprime/): `weights/view_classifier.pt`, a bare state dict, or the older
Lightning-style `view_classifier.ckpt` whose `state_dict` keys carry a `model.` prefix.
`classify_store` fills `videos.view` and `videos.view_confidence`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedstore import config
from embedstore.encoders.echoprime import EchoPrimePreparer, normalise
from embedstore.encoders.state import load_into, load_torch_file
from embedstore.encoders.weights import resolve
from embedstore.hashing import sha256_file
from embedstore.errors import BadInput
from embedstore.progress import bar

VIEWS = ("A2C", "A3C", "A4C", "A5C", "Apical_Doppler", "Doppler_Parasternal_Long", "Doppler_Parasternal_Short",
         "Parasternal_Long", "Parasternal_Short", "SSN", "Subcostal")
CLASSIFIERS = ("echoprime",)
LAYOUT = ("convnext_base state dict with classifier.2 = Linear(1024, 11): bare (view_classifier.pt) or"
          " Lightning {'state_dict': {'model.*'}} (view_classifier.ckpt)")


def classifier_state(saved, path: Path) -> dict:
    """The convnext_base state dict inside either released layout."""
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        inner = {k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")}
        if not inner:
            raise BadInput(f"{path}: a Lightning checkpoint without model.* keys; expected {LAYOUT}")
        return inner
    return saved


class ViewClassifier:
    """EchoPrime's view classifier; `classify` takes EchoPrime-prepared clips (uint8 [3, t, 224, 224])."""

    def __init__(self, model_data: str | Path | None = None, random_init: bool = False, device: str = "auto", seed: int = 0):
        import torch
        from torchvision.models import convnext_base

        self.device = config.device(device)
        self.resolved = None if random_init else resolve("echoprime-views", model_data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = convnext_base(weights=None)
            model.classifier[-1] = torch.nn.Linear(model.classifier[-1].in_features, len(VIEWS))
        if self.resolved is not None:
            path = self.resolved.file
            load_into(model, classifier_state(load_torch_file(path, LAYOUT), path), path, LAYOUT)
        self.model = model.eval().to(self.device)
        self.preparer = EchoPrimePreparer()

    @property
    def weights(self) -> dict:
        if self.resolved is None:
            return {"weights": "random-init", "weights_sha256": "random-init"}
        return {"weights": str(self.resolved.file), "weights_sha256": sha256_file(self.resolved.file)}

    def classify(self, prepared: list[np.ndarray]) -> list[tuple[str, float]]:
        """(view label, softmax probability of that label) per prepared clip."""
        import torch

        if not prepared:
            return []
        first = np.stack([x[:, :1] for x in prepared])  # frame 0 only: [B, 3, 1, 224, 224]
        with torch.inference_mode():
            x = normalise(torch.from_numpy(first).to(self.device))[:, :, 0]
            probs = torch.softmax(self.model(x).float(), dim=1).cpu().numpy()
        best = probs.argmax(axis=1)
        return [(VIEWS[int(i)], float(probs[n, i])) for n, i in enumerate(best)]


@dataclass
class ViewSummary:
    classifier: str
    classified: int = 0
    counts: dict = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    weights: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"classifier": self.classifier, "classified": self.classified, "counts": self.counts,
                "failed": self.failed, **self.weights}


def classify_store(store, classifier: str = "echoprime", model_data: str | Path | None = None, random_init: bool = False,
                   device: str = "auto", batch_size: int = 16, workers: int = 2, all_videos: bool = False,
                   progress: bool = True) -> ViewSummary:
    """Classify the view of every video of `store` without one (all with `all_videos`); a bad file is listed."""
    from embedstore.encode.reader import prepared_stream
    from embedstore.video.regions import MaskedPreparer

    if classifier not in CLASSIFIERS:
        raise BadInput(f"unknown view classifier {classifier!r}; known: {', '.join(CLASSIFIERS)}")
    model = ViewClassifier(model_data, random_init=random_init, device=device)
    summary = ViewSummary(classifier, weights=model.weights)
    items = store.catalog.videos_to_classify(all_videos)
    counts: Counter = Counter()
    args = {"classifier": classifier, "all": all_videos, **model.weights}
    with store.run("views", args) as run, bar(total=len(items), desc="views", unit="video", enabled=progress) as pbar:
        ids, inputs = [], []

        def flush() -> None:
            labels = model.classify(inputs)
            store.catalog.set_views([(i, view, p) for i, (view, p) in zip(ids, labels)])
            counts.update(view for view, _ in labels)
            run.added += len(ids)
            pbar.update(len(ids))
            ids.clear()
            inputs.clear()

        preparer = MaskedPreparer(model.preparer, store.mask)  # the classifier sees what the store's encoders see
        for video_id, result in prepared_stream(items, preparer, workers, ahead=2 * batch_size):
            if isinstance(result, str):
                run.fail(video_id, result)
                pbar.update(1)
                continue
            ids.append(video_id)
            inputs.append(result)
            if len(ids) >= batch_size:
                flush()
        if ids:
            flush()
        summary.classified, summary.failed = run.added, list(run.failures)
    summary.counts = dict(sorted(counts.items()))
    return summary
