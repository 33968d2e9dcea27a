"""echoprime-text: BiomedBERT (BertForMaskedLM, built from a local config folder) + text_projection,
keys backbone.* / text_projection.*, 512 tokens, projected [CLS]. A tiny BERT config and vocabulary
stand in for BiomedBERT's (same special-token ids: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedstore.encoders import get_encoder
from embedstore.errors import BadInput, WeightsNotFound
from tests.test_encoders import assert_one_line, assert_unit_rows, offline  # noqa: F401 (offline: autouse)

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "lv", "ejection", "fraction", "is", "normal", "the", "mitral",
         "valve", "%", "55", ".", "left", "ventricle"]
TINY_BERT = dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=512, model_type="bert")


@pytest.fixture(scope="module")
def bert_and_weights(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("echoprime-text")
    bert = root / "biomedbert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps(TINY_BERT))
    (bert / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    torch.manual_seed(7)
    module = torch.nn.Module()
    module.backbone = BertForMaskedLM(BertConfig(**TINY_BERT))
    module.text_projection = torch.nn.Linear(32, 512)
    weights = root / "model_data" / "weights" / "echo_prime_text_encoder.pt"
    weights.parent.mkdir(parents=True)
    torch.save(module.state_dict(), weights)
    return bert, root / "model_data", module.eval()


def test_keys_tokens_and_projected_cls(bert_and_weights):
    bert, model_data, reference = bert_and_weights
    enc = get_encoder("echoprime-text", weights=model_data, bert=bert, device="cpu")
    assert set(reference.state_dict()) == set(enc.model.state_dict())
    assert all(k.startswith(("backbone.", "text_projection.")) for k in enc.model.state_dict())
    texts = ["LV ejection fraction is 55 %.", "The mitral valve is normal."]
    tokens = enc.tokenize(texts)
    assert tokens.shape == (2, 2, 512)
    assert tokens[0, 0, :9].tolist() == [2, 5, 6, 7, 8, 14, 13, 15, 3] and (tokens[0, 0, 9:] == 0).all()
    vectors = enc.embed_texts(texts)
    assert_unit_rows(vectors, 2, 512)
    with torch.inference_mode():
        ids = torch.from_numpy(tokens[:, 0])
        hidden = reference.backbone(input_ids=ids, attention_mask=torch.from_numpy(tokens[:, 1]),
                                    output_hidden_states=True).hidden_states[-1][:, 0, :]
        expected = torch.nn.functional.normalize(reference.text_projection(hidden), dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(enc.embed_texts(texts[:1]), vectors[:1], atol=1e-5)
    long = enc.tokenize(["normal " * 900])
    assert long.shape == (1, 2, 512) and long[0, 0, -1] == 3  # cut to 512 with [SEP] last
    with pytest.raises(BadInput, match="embeds reports only"):
        enc.embed_videos([])


def test_missing_files_say_where(bert_and_weights, offline, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("EMBEDSTORE_BIOMEDBERT", raising=False)
    bert, model_data, _ = bert_and_weights
    with pytest.raises(WeightsNotFound) as err:
        get_encoder("echoprime-text", bert=bert)
    assert_one_line(str(err.value))
    assert "weights/echo_prime_text_encoder.pt" in str(err.value) and str(offline / "echoprime") in str(err.value)
    with pytest.raises(WeightsNotFound, match="BiomedBERT config and vocabulary"):
        get_encoder("echoprime-text", weights=model_data)


def test_wrong_key_names_are_refused(bert_and_weights, tmp_path):
    bert, model_data, reference = bert_and_weights
    state = {k.replace("backbone.", "bert_model."): v for k, v in reference.state_dict().items()}
    path = tmp_path / "echo_prime_text_encoder.pt"
    torch.save(state, path)
    with pytest.raises(BadInput) as err:
        get_encoder("echoprime-text", weights=path, bert=bert)
    assert_one_line(str(err.value))
    assert "missing backbone." in str(err.value) and "text_projection" in str(err.value)


def test_reports_encoded_and_searched_by_text_from_the_cli(bert_and_weights, tmp_path, monkeypatch):
    """encode --target reports, index, search --text: the query encoder is rebuilt from the recorded
    weights and $EMBEDSTORE_BIOMEDBERT, and a report's own text finds it first."""
    from typer.testing import CliRunner

    from embedstore.cli import app
    from embedstore.store import open_store

    bert, model_data, _ = bert_and_weights
    monkeypatch.setenv("EMBEDSTORE_BIOMEDBERT", str(bert))
    texts = ["LV ejection fraction is 55 %.", "The mitral valve is normal.", "the left ventricle is normal."]
    with open_store(tmp_path / "s", create=True) as st:
        st.add_reports([{"report_id": f"r{i}", "study_id": f"S{i}", "text": t} for i, t in enumerate(texts)])
    run = CliRunner()
    store = str(tmp_path / "s")
    out = run.invoke(app, ["encode", "--store", store, "-e", "echoprime-text", "--weights", str(model_data),
                           "--target", "reports", "--device", "cpu", "--quiet"])
    assert out.exit_code == 0, out.output
    assert run.invoke(app, ["index", "--store", store, "-e", "echoprime-text", "--target", "reports"]).exit_code == 0
    found = run.invoke(app, ["search", "--store", store, "-e", "echoprime-text", "--target", "reports",
                             "--text", texts[1], "-k", "2", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["id"] == "r1" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
