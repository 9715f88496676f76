"""HuBERT's label tools (examples/hubert/simple_kmeans): MFCC and layer features, shards, k-means labels, dict.km.txt.

Checked against the real things: kaldi-native-fbank's MFCC and genuine fairseq 0.12.2's own scripts' outputs
(tests/fixtures/fairseq/hubert_units, written by scripts/fairseq_fixtures/hubert_units_fixtures.py) on real speech:
fairseq's HuBERT test file tests/fixtures/6313-76958-0021.flac (LibriSpeech, CC BY 4.0) and demo corpus audio;
labels against scikit-learn's ``predict``.
"""

import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_lite.cli.common import run_cli
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.data.feature_shards import (FeatureShardWriter, manifest_shard, read_feature_shard, shard_range,
                                              split_utterances)
from fairseq_lite.data.kmeans_labels import import_sklearn, load_kmeans, save_kmeans
from fairseq_lite.data.mfcc import kaldi_mfcc, mfcc_with_deltas
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.layer_features import chunk_starts, layer_features, load_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "examples", "hubert", "simple_kmeans")
GENUINE = os.path.join(REPO, "tests", "fixtures", "fairseq", "hubert_units")
FLAC = os.path.join(REPO, "tests", "fixtures", "6313-76958-0021.flac")
DEMO = [os.path.join(REPO, "demo", "corpus", "valid", "201", "20101", f"201-20101-000{i}.flac") for i in range(4)]
with open(os.path.join(GENUINE, "meta.json")) as _f:
    META = json.load(_f)
#: float32 implementations of Kaldi's MFCC differ from each other (and from float64) by up to ~1e-3
MFCC_ATOL = 3e-3


def tool(name, folder=TOOLS):
    """A simple_kmeans script as a module (its ``main(argv)`` runs in this process)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tsv(folder, split, root, files):
    with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
        f.write(root + "\n" + "".join(f"{os.path.relpath(p, root)}\t{sf.info(p).frames}\n" for p in files))


def knf_mfcc(wav, rate):
    import kaldi_native_fbank as knf

    opts = knf.MfccOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = rate
    opts.use_energy = False
    mfcc = knf.OnlineMfcc(opts)
    mfcc.accept_waveform(rate, wav.tolist())
    mfcc.input_finished()
    return np.stack([mfcc.get_frame(i) for i in range(mfcc.num_frames_ready)])


def km_from_centers(centers):
    """A fitted scikit-learn KMeans whose centers are exactly ``centers`` (each center is its own cluster)."""
    cluster, _ = import_sklearn()
    return cluster.KMeans(len(centers), init=centers, n_init=1, max_iter=1).fit(centers)


# -- MFCC ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [FLAC, DEMO[0]])
def test_mfcc_equals_kaldi_native_fbank_on_real_speech(path):
    wav, rate = sf.read(path, dtype="float32")
    ours, reference = kaldi_mfcc(wav, rate).numpy(), knf_mfcc(wav, rate)
    assert ours.shape == reference.shape == (1 + (len(wav) - 400) // 160, 13)
    np.testing.assert_allclose(ours, reference, atol=MFCC_ATOL, rtol=0)
    print(f"max |ours - kaldi-native-fbank| on {os.path.basename(path)}: {np.abs(ours - reference).max():.2e}")


def test_mfcc_shards_equal_genuine_fairseq_dump_mfcc_feature(tmp_path):
    """Same shard split, same .len, same 39-dim frames as fairseq's dump_mfcc_feature.py (torchaudio's MFCC)."""
    write_tsv(tmp_path, "train", REPO, [os.path.join(REPO, p) for p in META["audio"]])
    dump = tool("dump_mfcc_feature")
    for rank in range(META["nshard"]):
        assert dump.main([str(tmp_path), "train", str(META["nshard"]), str(rank), str(tmp_path / "feat")]) == 0
        name = f"train_{rank}_{META['nshard']}"
        assert (tmp_path / "feat" / f"{name}.len").read_text() == open(f"{GENUINE}/mfcc/{name}.len").read()
        ours, theirs = np.load(tmp_path / "feat" / f"{name}.npy"), np.load(f"{GENUINE}/mfcc/{name}.npy")
        assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=MFCC_ATOL, rtol=0)
        print(f"{name}: max |ours - fairseq| {np.abs(ours - theirs).max():.2e} (mfcc, Δ, ΔΔ: "
              f"{[float(np.abs(ours - theirs)[:, i:i + 13].max()) for i in (0, 13, 26)]})")


def test_mfcc_of_audio_too_short_for_a_frame_is_empty_and_the_tool_says_which_file(tmp_path):
    assert mfcc_with_deltas(np.zeros(399, np.float32)).shape == (0, 39)
    assert mfcc_with_deltas(np.zeros(400, np.float32)).shape == (1, 39)
    sf.write(tmp_path / "short.wav", np.zeros(300, np.float32), 16000)
    write_tsv(tmp_path, "train", str(tmp_path), [str(tmp_path / "short.wav")])
    with pytest.raises(DataError, match=r"train.tsv:2: .*short.wav has 300 samples"):
        tool("dump_mfcc_feature").main([str(tmp_path), "train", "1", "0", str(tmp_path / "feat")])


# -- shards --------------------------------------------------------------------------------------------------


def test_shard_ranges_partition_the_manifest_like_fairseq():
    for total, nshard in [(4, 2), (5, 2), (7, 3), (100, 7), (3, 3)]:
        ranges = [shard_range(total, nshard, rank, "x.tsv") for rank in range(nshard)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    # fairseq's Python round(): 2.5 rounds to 2, so the first of 5 lines in 2 shards gets 2 utterances
    assert [shard_range(5, 2, r, "x.tsv") for r in range(2)] == [(0, 2), (2, 5)]
    assert [shard_range(7, 3, r, "x.tsv") for r in range(3)] == [(0, 2), (2, 5), (5, 7)]
    with pytest.raises(DataError, match="x.tsv: shard 0 of 4 is empty"):
        shard_range(2, 4, 0, "x.tsv")
    with pytest.raises(ConfigError, match="rank 2 of nshard 2"):
        shard_range(5, 2, 2, "x.tsv")


def test_feature_shard_round_trip_and_plain_npy_layout(tmp_path):
    rng = np.random.default_rng(0)
    utterances = [rng.normal(size=(n, 5)).astype(np.float32) for n in (3, 1, 7)]
    with FeatureShardWriter(str(tmp_path), "valid", 1, 3) as writer:
        for x in utterances:
            writer.append(x)
    assert np.array_equal(np.load(tmp_path / "valid_1_3.npy"), np.concatenate(utterances))  # one plain .npy
    assert (tmp_path / "valid_1_3.len").read_text() == "3\n1\n7\n"
    features, lengths = read_feature_shard(str(tmp_path), "valid", 1, 3)
    assert [x.tolist() for x in split_utterances(features, lengths)] == [x.tolist() for x in utterances]
    assert sorted(os.listdir(tmp_path)) == ["valid_1_3.len", "valid_1_3.npy"]  # no temporary files left


def test_failed_dump_keeps_the_earlier_shard(tmp_path):
    with FeatureShardWriter(str(tmp_path), "train", 0, 1) as writer:
        writer.append(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError):
        with FeatureShardWriter(str(tmp_path), "train", 0, 1) as writer:
            writer.append(np.zeros((4, 3), np.float32))
            raise RuntimeError("killed mid-shard")
    features, lengths = read_feature_shard(str(tmp_path), "train", 0, 1)
    assert features.tolist() == [[1.0] * 3] * 2 and lengths.tolist() == [2]
    assert sorted(os.listdir(tmp_path)) == ["train_0_1.len", "train_0_1.npy"]


def test_shard_and_manifest_errors_name_the_file(tmp_path):
    with FeatureShardWriter(str(tmp_path), "train", 0, 1) as writer:
        writer.append(np.ones((4, 3), np.float32))
    (tmp_path / "train_0_1.len").write_text("3\n")
    with pytest.raises(DataError, match=r"train_0_1.len: its 1 frame counts add up to 3, but .*train_0_1.npy holds 4"):
        read_feature_shard(str(tmp_path), "train", 0, 1)
    (tmp_path / "train_0_1.len").write_text("4\nfour\n")
    with pytest.raises(DataError, match=r"train_0_1.len:2: expected a frame count, got 'four'"):
        read_feature_shard(str(tmp_path), "train", 0, 1)
    (tmp_path / "train_0_1.len").write_text("4\n")
    (tmp_path / "train_0_1.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"train_0_1.npy is not a feature .npy"):
        read_feature_shard(str(tmp_path), "train", 0, 1)
    with pytest.raises(DataError, match=r"valid_0_1.len does not exist"):
        read_feature_shard(str(tmp_path), "valid", 0, 1)
    (tmp_path / "bad.tsv").write_text("/root\na.wav\t16000\nb.wav 16000\n")
    with pytest.raises(DataError, match=r"bad.tsv:3: expected 'relative/path<TAB>num_samples'"):
        manifest_shard(str(tmp_path / "bad.tsv"), 1, 0)


# -- k-means ---------------------------------------------------------------------------------------------------


def test_labels_of_genuine_fairseq_models_and_features_equal_fairseq_dump_km_label(tmp_path):
    """Ours on fairseq's MFCC shards with fairseq's k-means centers gives fairseq's labels, and fairseq's
    dump_km_label.py, reading the joblib file of our learn_kmeans.py, gave the labels our model predicts."""
    nshard = META["nshard"]
    for centers, labels in (("fairseq_km_centers", "labels"), ("our_km_centers", "labels_of_our_km")):
        km_path = str(tmp_path / f"{centers}.bin")
        save_kmeans(km_from_centers(np.load(f"{GENUINE}/{centers}.npy")), km_path)
        for rank in range(nshard):
            tool("dump_km_label").main([f"{GENUINE}/mfcc", "train", km_path, str(nshard), str(rank),
                                        str(tmp_path / labels)])
            name = f"train_{rank}_{nshard}.km"
            assert (tmp_path / labels / name).read_text() == open(f"{GENUINE}/{labels}/{name}").read()


def test_learn_kmeans_with_fairseqs_seed_gives_fairseqs_model(tmp_path):
    import sklearn

    if sklearn.__version__ != META["scikit-learn"]:
        pytest.skip(f"the fixtures were fitted with scikit-learn {META['scikit-learn']}, this is {sklearn.__version__}")
    km_path = str(tmp_path / "km.bin")
    tool("learn_kmeans").main([f"{GENUINE}/mfcc", "train", str(META["nshard"]), km_path, *META["kmeans_args"]])
    centers = load_kmeans(km_path).cluster_centers_
    np.testing.assert_allclose(centers, np.load(f"{GENUINE}/fairseq_km_centers.npy"), rtol=1e-5, atol=1e-5)


def test_kmeans_labels_equal_sklearn_predict_and_joblib_round_trip(tmp_path):
    rng = np.random.RandomState(0)
    features = np.concatenate([rng.normal(c, 0.3, size=(40, 6)) for c in range(5)]).astype(np.float32)
    lengths = [30, 50, 60, 60]
    with FeatureShardWriter(str(tmp_path), "train", 0, 1) as writer:
        for start, n in zip(np.cumsum([0] + lengths[:-1]), lengths):
            writer.append(features[start:start + n])
    km_path = str(tmp_path / "km.bin")
    assert tool("learn_kmeans").main([str(tmp_path), "train", "1", km_path, "5", "--n_init", "2",
                                      "--batch_size", "64"]) == 0
    import joblib

    model = joblib.load(km_path)  # a plain joblib file, as fairseq's dump_km_label.py loads it
    assert type(model).__name__ == "MiniBatchKMeans" and model.n_init == 2 and model.max_no_improvement == 100
    assert np.array_equal(load_kmeans(km_path).cluster_centers_, model.cluster_centers_)
    tool("dump_km_label").main([str(tmp_path), "train", km_path, "1", "0", str(tmp_path / "lab")])
    lines = (tmp_path / "lab" / "train_0_1.km").read_text().splitlines()
    assert [len(line.split()) for line in lines] == lengths
    assert [int(v) for line in lines for v in line.split()] == model.predict(features).tolist()


def test_kmeans_errors_name_the_files(tmp_path):
    with FeatureShardWriter(str(tmp_path), "train", 0, 1) as writer:
        writer.append(np.ones((4, 3), np.float32))
    km_path = str(tmp_path / "km.bin")
    save_kmeans(km_from_centers(np.eye(2, 5, dtype=np.float32)), km_path)
    with pytest.raises(DataError, match=r"km.bin clusters 5-dim features but .*train_0_1.npy holds 3-dim ones"):
        tool("dump_km_label").main([str(tmp_path), "train", km_path, "1", "0", str(tmp_path / "lab")])
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="junk.bin: not a joblib k-means model"):
        load_kmeans(str(tmp_path / "junk.bin"))
    import joblib

    joblib.dump({"cluster_centers": 1}, tmp_path / "dict.bin")
    with pytest.raises(DataError, match="dict.bin holds a dict, not a fitted k-means model"):
        load_kmeans(str(tmp_path / "dict.bin"))
    with pytest.raises(DataError, match=r"train_\*_1.npy: 4 frames cannot make 20 clusters"):
        tool("learn_kmeans").main([str(tmp_path), "train", "1", km_path, "20"])


def test_missing_scikit_learn_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(ConfigError, match=r"pip install 'fairseq_lite\[hubert\]'"):
        import_sklearn()


def test_write_km_dict_writes_the_models_dictionary_and_merges_the_shards(tmp_path):
    km_path = str(tmp_path / "km.bin")
    save_kmeans(km_from_centers(np.arange(21, dtype=np.float32).reshape(7, 3)), km_path)
    (tmp_path / "train_0_2.km").write_text("1 2 3\n4 5\n")
    (tmp_path / "train_1_2.km").write_text("6 6\n")
    write = tool("write_km_dict")
    assert write.main([str(tmp_path), km_path, "--split", "train", "--nshard", "2"]) == 0
    assert (tmp_path / "dict.km.txt").read_text() == "".join(f"{i} 1\n" for i in range(7))
    assert len(Dictionary.load(str(tmp_path / "dict.km.txt"))) == 7 + 4  # the 4 special symbols, as fairseq's
    assert (tmp_path / "train.km").read_text() == "1 2 3\n4 5\n6 6\n"
    with pytest.raises(DataError, match=r"valid_1_2.km does not exist"):
        (tmp_path / "valid_0_2.km").write_text("1\n")
        write.main([str(tmp_path), km_path, "--split", "valid", "--nshard", "2"])
    with pytest.raises(ConfigError, match="--split needs --nshard"):
        write.main([str(tmp_path), km_path, "--split", "train"])


# -- layer features ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", sorted(META["layer_checkpoints"]))
def test_layer_features_equal_genuine_fairseq_dump_scripts(tmp_path, folder):
    """dump_hubert_feature.py on a wav2vec 2.0 (fairseq's dump_w2v2_feature.py) and a HuBERT checkpoint, in
    --max_chunk pieces, on the CPU: fairseq's features within 1e-4."""
    write_tsv(tmp_path, "layer", REPO, [os.path.join(REPO, p) for p in META["layer_audio"]])
    checkpoint = os.path.join(REPO, "tests", "fixtures", "fairseq", META["layer_checkpoints"][folder])
    tool("dump_hubert_feature").main([str(tmp_path), "layer", checkpoint, str(META["layer"]), "1", "0",
                                      str(tmp_path / "feat"), "--max_chunk", str(META["max_chunk"]),
                                      "--device", "cpu"])
    assert (tmp_path / "feat" / "layer_0_1.len").read_text() == open(f"{GENUINE}/{folder}/layer_0_1.len").read()
    np.testing.assert_allclose(np.load(tmp_path / "feat" / "layer_0_1.npy"),
                               np.load(f"{GENUINE}/{folder}/layer_0_1.npy"), atol=1e-4, rtol=1e-5)


def test_chunking_and_layer_checks():
    assert chunk_starts(40000, 16000, 400) == [0, 16000, 32000]
    assert chunk_starts(32100, 16000, 400) == [0, 16000]  # a 100-sample tail joins the piece before it
    assert chunk_starts(300, 16000, 400) == [0]
    checkpoint = os.path.join(REPO, "tests", "fixtures", "fairseq", META["layer_checkpoints"]["hubert_layer1"])
    model, normalize, rate = load_encoder(checkpoint, torch.device("cpu"))
    wav, _ = sf.read(DEMO[0], dtype="float32")
    assert rate == 16000 and not normalize
    whole = layer_features(model, wav, 2, normalize, max_chunk=len(wav))
    expected, _ = model.extract_features(torch.from_numpy(wav).unsqueeze(0), output_layer=2)
    assert torch.equal(whole, expected[0])
    # a 100-sample last piece (fairseq's CNN fails on it) is run with the piece before it
    assert torch.equal(layer_features(model, wav, 2, normalize, max_chunk=len(wav) - 100), whole)
    dump = tool("dump_hubert_feature")
    with pytest.raises(ConfigError, match="layer 3: the model has 2 transformer layers; give one in 1..2"):
        dump.main(["unused", "train", checkpoint, "3", "1", "0", "unused"])


# -- the whole recipe -------------------------------------------------------------------------------------------


def test_recipe_end_to_end_on_demo_audio_and_one_line_errors(tmp_path, capsys):
    """fairseq's README steps with our scripts: manifest → MFCC (2 shards) → k-means → labels → {split}.km + dict."""
    audio = tmp_path / "audio"
    audio.mkdir()
    for path in DEMO:
        shutil.copy(path, audio)
    manifest = tool("wav2vec_manifest", os.path.join(REPO, "examples", "wav2vec"))
    assert manifest.main([str(audio), "--dest", str(tmp_path), "--valid-percent", "0", "--workers", "1"]) == 0
    feat, lab, km = str(tmp_path / "feat"), str(tmp_path / "lab"), str(tmp_path / "km.bin")
    for rank in range(2):
        tool("dump_mfcc_feature").main([str(tmp_path), "train", "2", str(rank), feat])
    tool("learn_kmeans").main([feat, "train", "2", km, "4", "--n_init", "1", "--percent", "0.5"])
    for rank in range(2):
        tool("dump_km_label").main([feat, "train", km, "2", str(rank), lab])
    tool("write_km_dict").main([lab, km, "--split", "train", "--nshard", "2"])
    frames = [int(n) for rank in range(2) for n in open(f"{feat}/train_{rank}_2.len").read().split()]
    labels = open(f"{lab}/train.km").read().splitlines()
    assert len(labels) == len(DEMO) and [len(line.split()) for line in labels] == frames
    assert {int(v) for line in labels for v in line.split()} <= set(range(4))
    assert open(f"{lab}/dict.km.txt").read() == "0 1\n1 1\n2 1\n3 1\n"

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:
        run_cli(tool("dump_km_label").main, [feat, "valid", km, "2", "0", lab])
    stderr = capsys.readouterr().err
    assert exit_code.value.code == 1 and stderr.startswith("error: ") and stderr.count("\n") == 1
    assert "valid_0_2.len does not exist" in stderr


def test_extract_features_script_reads_hubert_checkpoints_through_the_same_loader(tmp_path):
    """scripts/extract_features.py (0-based --layers) gives what layer_features gives (1-based) for a HuBERT file."""
    write_tsv(tmp_path, "one", REPO, [DEMO[0]])
    checkpoint = os.path.join(REPO, "tests", "fixtures", "fairseq", META["layer_checkpoints"]["hubert_layer1"])
    extract = tool("extract_features", os.path.join(REPO, "scripts"))
    assert extract.main(["--checkpoint", checkpoint, "--output", str(tmp_path / "out"), "--layers", "0",
                         "--device", "cpu", str(tmp_path / "one.tsv")]) == 0
    model, normalize, _ = load_encoder(checkpoint, torch.device("cpu"))
    wav, _ = sf.read(DEMO[0], dtype="float32")
    written = np.load(tmp_path / "out" / os.path.relpath(DEMO[0], REPO).replace(".flac", ".npy"))
    np.testing.assert_allclose(written, layer_features(model, wav, 1, normalize).numpy(), atol=1e-6, rtol=0)


def test_feature_tools_run_under_bf16_autocast_and_write_float32(tmp_path):
    """``--bf16`` (CPU autocast) in dump_hubert_feature.py and scripts/extract_features.py: float32 files within
    bf16's resolution of the fp32 ones, and really computed in bf16; ``--fp16`` on the CPU is refused."""
    write_tsv(tmp_path, "one", REPO, [DEMO[0]])
    checkpoint = os.path.join(REPO, "tests", "fixtures", "fairseq", META["layer_checkpoints"]["hubert_layer1"])
    dump, extract = tool("dump_hubert_feature"), tool("extract_features", os.path.join(REPO, "scripts"))
    written = {}
    for precision, flags in (("fp32", []), ("bf16", ["--bf16"])):
        dump.main([str(tmp_path), "one", checkpoint, "2", "1", "0", str(tmp_path / precision), "--cpu", *flags])
        extract.main(["--checkpoint", checkpoint, "--output", str(tmp_path / f"x{precision}"), "--layers", "1",
                      "--cpu", *flags, str(tmp_path / "one.tsv")])
        [npy] = (tmp_path / f"x{precision}").rglob("*.npy")
        written[precision] = (np.load(tmp_path / precision / "one_0_1.npy"), np.load(npy))
    for fp32, bf16 in zip(*written.values()):
        assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
        assert 0 < np.abs(bf16 - fp32).max() < 0.1 * np.abs(fp32).max()
    np.testing.assert_allclose(written["bf16"][0], written["bf16"][1], atol=0.1 * np.abs(written["fp32"][0]).max())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--fp16 needs a CUDA GPU"):
            dump.main([str(tmp_path), "one", checkpoint, "2", "1", "0", str(tmp_path / "fp16"), "--fp16"])
