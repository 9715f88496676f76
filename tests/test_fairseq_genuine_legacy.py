"""Files genuine fairseq 0.12.2 wrote load in fairseq_lite and compute what fairseq computed (atol 1e-4).

tests/fixtures/fairseq/<name>/ hold a checkpoint written by fairseq's own commands, fixed inputs and fairseq's
outputs on them (scripts/fairseq_fixtures/legacy_fixtures.py, run in the genuine-fairseq venv; meta.json says
how each was made):

- conformer_{abs,rope,rel_pos}_pretrain: ``fairseq-hydra-train`` on fairseq's conformer recipe; the CNN
  features, each layer's output, the final ``x``, a padded batch, and the contrastive loss of fairseq's
  criterion with the mask and negatives fairseq drew (fed to fairseq_lite, so the sampling is equal);
- wav2vec1_cnn, vq_wav2vec_gumbel, vq_wav2vec_kmeans: ``fairseq-train`` with the README's flags; z, the
  codes, c (the cnn aggregator: fairseq_lite's gru differs on purpose), the criterion loss with fairseq's
  negatives (fairseq_lite draws other ones on purpose), fairseq's vq-wav2vec_featurize.py codes;
- transformer_lm: fairseq-preprocess + fairseq-train; log-probabilities of fixed sequences, also through
  infer.py's LM loader and the fairseqlm decoder's LM scorer.
"""

import importlib.util
import os

import pytest
import torch

from fairseq_lite.models.wav2vec import wav2vec2 as wav2vec2_module
from genuine_fixtures import ATOL, FIXTURES, assert_close, fixture, load

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples", "wav2vec")








def criterion_outputs(model, task, cfg, net_input):
    """fairseq_lite's criterion of the checkpoint in eval mode: the loss, sample size, logging and logits."""
    criterion = task.build_criterion(cfg.criterion).eval()
    logits = []
    get_logits = model.get_logits
    model.get_logits = lambda net_output: logits.append(get_logits(net_output)) or logits[-1]
    try:
        with torch.no_grad():
            loss, sample_size, logging_output = criterion(model, {"id": torch.arange(2), "net_input": net_input})
    finally:
        del model.get_logits
    return loss, sample_size, logging_output, logits[0]


def assert_criterion_matches(ours, expected):
    loss, sample_size, logging_output, logits = ours
    assert_close(loss, expected["loss"], "loss")
    assert_close(sample_size, expected["sample_size"], "sample_size")
    assert_close(logits, expected["logits"], "logits")
    for key in (k for k in expected if k.startswith("log_")):
        assert key[4:] in logging_output, f"logging output {key[4:]} missing"
        assert_close(float(logging_output[key[4:]]), expected[key], key)


# -- wav2vec 2.0 conformer ----------------------------------------------------------------------------------

CONFORMERS = ["abs", "rope", "rel_pos"]


@pytest.fixture(scope="module", params=CONFORMERS)
def conformer(request):
    folder, inputs, expected, meta = fixture(f"conformer_{request.param}_pretrain")
    model, cfg, task = load(folder)
    assert (cfg.model.layer_type, cfg.model.attn_type, cfg.model.pos_enc_type) == (
        "conformer", "espnet", request.param)
    return model, cfg, task, inputs, expected


def test_conformer_features_layers_and_x_match_fairseq(conformer):
    model, _, _, inputs, expected = conformer
    with torch.no_grad():
        assert_close(model.feature_extractor(inputs["source"]), expected["features"], "features")
        result = model.extract_features(inputs["source"], None, mask=False)
        padded = model.extract_features(inputs["padded_source"], inputs["padding_mask"], mask=False)
    assert_close(result["x"], expected["x"], "x")
    assert_close(result["features"], expected["unmasked_features"], "unmasked_features")
    assert len(result["layer_results"]) == 2
    for i, (layer_x, _, _) in enumerate(result["layer_results"]):
        assert_close(layer_x, expected[f"layer_{i}"], f"layer_{i}")
    assert torch.equal(padded["padding_mask"], torch.from_numpy(expected["frame_padding_mask"]))
    assert_close(padded["x"], expected["x_padded"], "x_padded")


def test_conformer_pretraining_loss_with_fairseqs_mask_and_negatives(conformer, monkeypatch):
    model, cfg, task, inputs, expected = conformer
    recorded = torch.from_numpy(expected["negative_indices"])

    def fairseqs_negatives(y, num, n_negatives, cross_sample_negatives=0, **_):
        """fairseq's draw: flat indices into the B×M masked targets, N per masked frame."""
        bsz, _, dim = y.shape
        negs = y.reshape(-1, dim)[recorded.reshape(-1)].view(bsz, num, n_negatives, dim)
        return negs.permute(2, 0, 1, 3), recorded

    monkeypatch.setattr(wav2vec2_module, "sample_negatives", fairseqs_negatives)
    net_input = {"source": inputs["source"], "mask_indices": torch.from_numpy(expected["mask_indices"])}
    assert_criterion_matches(criterion_outputs(model, task, cfg, net_input), expected)


# -- wav2vec 1.0 and vq-wav2vec -----------------------------------------------------------------------------

WAV2VEC1 = ["wav2vec1_cnn", "vq_wav2vec_gumbel", "vq_wav2vec_kmeans"]


@pytest.fixture(scope="module", params=WAV2VEC1)
def wav2vec1(request):
    folder, inputs, expected, meta = fixture(request.param)
    model, cfg, task = load(folder)
    return request.param, folder, model, cfg, task, inputs, expected


def test_wav2vec1_checkpoint_keeps_the_values_fairseq_stored(wav2vec1):
    name, _, _, cfg, _, _, _ = wav2vec1
    # 0.12.2's flag parser makes True-default booleans store_false: the README's flags stored False
    assert cfg.model.skip_connections_agg is (name == "vq_wav2vec_kmeans")
    assert cfg.model.log_compression is (name != "wav2vec1_cnn")
    assert str(cfg.model.vq_type) == {"wav2vec1_cnn": "none", "vq_wav2vec_gumbel": "gumbel",
                                      "vq_wav2vec_kmeans": "kmeans"}[name]


def test_wav2vec1_z_codes_and_c_match_fairseq(wav2vec1):
    name, _, model, _, _, inputs, expected = wav2vec1
    with torch.no_grad():
        z = model.feature_extractor(inputs["source"])
        assert_close(z, expected["z"], "z")
        if model.vector_quantizer is not None:
            q, codes = model.vector_quantizer.forward_idx(z)
            assert_close(q, expected["q"], "q")
            assert torch.equal(codes, torch.from_numpy(expected["codes"])), "codes"
            z = model.vector_quantizer(z)["x"]
        assert_close(model.feature_aggregator(z), expected["c"], "c")


def test_wav2vec1_loss_with_fairseqs_negatives(wav2vec1):
    _, _, model, cfg, task, inputs, expected = wav2vec1
    negatives = torch.from_numpy(expected["negatives"])
    model.wav2vec_predictions.sample_negatives = lambda y: negatives
    try:
        ours = criterion_outputs(model, task, cfg, {"source": inputs["loss_source"]})
    finally:
        del model.wav2vec_predictions.sample_negatives
    assert_criterion_matches(ours, expected)


def load_script(name):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), os.path.join(EXAMPLES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wav2vec_featurize_gives_fairseqs_c():
    folder, inputs, expected, _ = fixture("wav2vec1_cnn")
    script = load_script("wav2vec_featurize")
    model = script.load_wav2vec(os.path.join(folder, "checkpoint.pt"), torch.device("cpu"))
    for row in range(2):
        c = script.featurize(model, inputs["source"][row].numpy(), False, torch.device("cpu"))
        assert_close(c, expected["c"][row], f"featurize c row {row}")


@pytest.mark.parametrize("name", ["vq_wav2vec_gumbel", "vq_wav2vec_kmeans"])
def test_vq_wav2vec_featurize_writes_fairseqs_codes(name, tmp_path):
    folder = os.path.join(FIXTURES, name)
    audio = os.path.join(folder, "audio")
    (tmp_path / "train.tsv").write_text(f"{audio}\na0.wav\t4000\na1.wav\t5600\n")
    script = load_script("vq-wav2vec_featurize")
    assert script.main(["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "codes"), "--checkpoint",
                        os.path.join(folder, "checkpoint.pt"), "--splits", "train", "--extension", "tsv",
                        "--log-format", "none"]) in (0, None)
    with open(os.path.join(folder, "train.src")) as f:
        assert (tmp_path / "codes" / "train.src").read_text() == f.read()


# -- transformer_lm -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def language_model():
    from fairseq_lite.cli.infer import load_lm

    folder, inputs, expected, meta = fixture("transformer_lm")
    model, dictionary = load_lm(os.path.join(folder, "checkpoint.pt"))
    return model, dictionary, inputs, expected, meta


def log_probs(model, tokens):
    with torch.no_grad():
        return model.get_normalized_probs(model(tokens), log_probs=True)


def test_transformer_lm_log_probs_match_fairseq(language_model):
    model, dictionary, inputs, expected, meta = language_model
    assert [dictionary.string(row[1:]) for row in inputs["tokens"]] == meta["sentences"]
    assert_close(log_probs(model, inputs["tokens"]), expected["log_probs"], "log_probs")
    padded = log_probs(model, inputs["padded_tokens"])
    keep = inputs["padded_tokens"] != dictionary.pad()
    assert_close(padded[keep], expected["log_probs_padded"][keep.numpy()], "log_probs_padded")


def test_fairseqlm_scorer_gives_fairseqs_sentence_scores(language_model):
    from fairseq_lite.decoding.flashlight import FairseqLM

    model, dictionary, inputs, expected, meta = language_model
    words = sorted({w for s in meta["sentences"] for w in s.split()})
    lm = FairseqLM(model, dictionary, words)
    for row, sentence in enumerate(meta["sentences"]):
        state = lm.start(False)
        theirs = expected["log_probs"][row]
        tokens = inputs["tokens"][row].tolist()
        for step, word in enumerate(sentence.split()):
            state, score = lm.score(state, words.index(word))
            assert abs(score - theirs[step, tokens[step + 1]]) < ATOL, (sentence, word)
        _, score = lm.finish(state)
        assert abs(score - theirs[len(tokens) - 1, dictionary.eos()]) < ATOL, (sentence, "</s>")
