"""EchoPrime's report encoder: BiomedBERT (masked-LM model) + Linear(768 -> 512) `text_projection`.

Weights: `<model_data>/weights/echo_prime_text_encoder.pt`, a bare state dict with keys `backbone.*`
(transformers BertForMaskedLM) and `text_projection.*`, loaded strictly. The BERT is built from its
config, never downloaded: the config and vocabulary come from a local folder (option `bert`, holding
config.json and vocab.txt of microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract) or from that hub
id in the Hugging Face cache. Tokens are padded and cut to 512; the vector is the projected [CLS] of
the last hidden state (the store L2-normalises it).
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np

from embedstore.encoders.base import Encoder, register
from embedstore.encoders.state import load_into, load_torch_file
from embedstore.encoders.weights import WEIGHTS, Resolved, hf_hub_cache
from embedstore.errors import BadInput, WeightsNotFound

BERT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
BERT_ENV = "EMBEDSTORE_BIOMEDBERT"
MAX_TOKENS = 512
LAYOUT = "EchoPrime text encoder state dict: backbone.* (BertForMaskedLM) + text_projection.* (768 -> 512)"


@register("echoprime-text")
class EchoPrimeText(Encoder):
    dim = 512
    modalities = frozenset({"text"})
    spec = {
        "tokenizer": f"BiomedBERT WordPiece ({BERT_REPO}), padded and cut to {MAX_TOKENS} tokens",
        "pooling": "[CLS] of the last hidden state, projected 768 -> 512",
        "licence": WEIGHTS["echoprime-text"].licence,  # recorded with the vectors (provenance)
    }
    # bert: folder with the BiomedBERT config.json and vocab.txt (else $EMBEDSTORE_BIOMEDBERT, else the hub cache)
    card = {"input_scale": "text: BiomedBERT tokens, padded or cut to 512", "frames": "none (reports)",
            "resize": "none"}
    defaults = {**Encoder.defaults, "batch_size": 8, "bert": None}

    def _load(self, resolved: Resolved | None):
        import torch
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig.from_pretrained(str(self.bert_folder), local_files_only=True)
        model = torch.nn.Module()
        model.backbone = BertForMaskedLM(config)
        model.text_projection = torch.nn.Linear(config.hidden_size, 512)
        if resolved is not None:
            load_into(model, load_torch_file(resolved.file, LAYOUT), resolved.file, LAYOUT)
        return model

    @cached_property
    def bert_folder(self) -> Path:
        explicit = self.options["bert"] or os.environ.get(BERT_ENV)
        if explicit:
            folder = Path(explicit).expanduser()
            if not (folder / "config.json").is_file():
                raise WeightsNotFound(f"{folder} holds no config.json; give the folder of {BERT_REPO} (config.json, vocab.txt)")
            return folder
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(BERT_REPO, "config.json", cache_dir=str(hf_hub_cache()))
        if isinstance(found, str):
            return Path(found).parent
        raise WeightsNotFound(
            f"echoprime-text needs the BiomedBERT config and vocabulary: not in the Hugging Face cache {hf_hub_cache()}"
            f" (hub id {BERT_REPO}); fetch with: hf download {BERT_REPO} config.json vocab.txt --local-dir DIR,"
            f" then set {BERT_ENV}=DIR (or pass bert=DIR)"
        )

    @cached_property
    def tokenizer(self):
        from transformers import BertTokenizerFast

        try:
            return BertTokenizerFast.from_pretrained(str(self.bert_folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsNotFound(f"{self.bert_folder}: no BiomedBERT vocabulary (vocab.txt) there ({exc})") from exc

    @property
    def preparer(self):
        raise BadInput("echoprime-text embeds reports only; embed videos with echoprime")

    def _forward(self, batch):
        hidden = self.model.backbone(input_ids=batch[:, 0], attention_mask=batch[:, 1], output_hidden_states=True)
        return self.model.text_projection(hidden.hidden_states[-1][:, 0, :])

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int64 [N, 2, 512]: input ids and attention mask, padded and cut to 512 as the authors'."""
        enc = self.tokenizer(list(texts), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="np")
        return np.stack([enc["input_ids"], enc["attention_mask"]], axis=1).astype(np.int64)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenize(texts)
        size = int(self.options["batch_size"])
        parts = [self._run(self._forward, tokens[i : i + size]) for i in range(0, len(tokens), size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
