"""The w2v-BERT fbank front end (modules/w2v_bert_frontend.py) against HF ``SeamlessM4TFeatureExtractor`` and
kaldi-native-fbank on real speech: demo corpus utterances (201-20101-000{0..3}.flac) cropped to odd Kaldi frame
counts, batched with padding."""

import itertools
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_lite.modules.kaldi_features import kaldi_fbank
from fairseq_lite.modules.w2v_bert_frontend import W2vBertFbankFrontend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = [os.path.join(REPO, "demo", "corpus", "valid", "201", "20101", f"201-20101-000{i}.flac") for i in range(4)]
#: samples of each crop: 131, 97, 75 and 120 Kaldi frames (400 + (n - 1) * 160 + a remainder)
LENGTHS = [400 + 130 * 160 + 50, 400 + 96 * 160 + 100, 400 + 74 * 160 + 3, 400 + 119 * 160 + 10]
FRAMES = [131, 97, 75, 120]


@pytest.fixture(scope="module")
def speech():
    """The cropped float32 waveforms and their padded batch (padding filled with noise the front end must ignore)."""
    waves = [sf.read(path, dtype="float32")[0][:n] for path, n in zip(DEMO, LENGTHS)]
    source = torch.randn(len(waves), max(LENGTHS)) * 0.3
    padding_mask = torch.ones(source.shape, dtype=torch.bool)
    for i, wave in enumerate(waves):
        source[i, : len(wave)] = torch.from_numpy(wave)
        padding_mask[i, : len(wave)] = False
    return waves, source, padding_mask


def hf_features(waves):
    transformers = pytest.importorskip("transformers")
    extractor = transformers.SeamlessM4TFeatureExtractor(padding_value=1.0)
    out = extractor(waves, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="np")
    return out["input_features"], out["attention_mask"]


def test_features_and_mask_equal_hf_seamless_m4t_extractor(speech):
    waves, source, padding_mask = speech
    expected, attention_mask = hf_features(waves)
    features, feature_padding_mask = W2vBertFbankFrontend()(source, padding_mask)
    assert features.dtype == torch.float32 and features.shape == expected.shape == (4, 66, 160)
    assert np.array_equal(~feature_padding_mask.numpy(), attention_mask.astype(bool))
    diff = np.abs(features.numpy() - expected).max()
    print(f"max |ours - HF SeamlessM4TFeatureExtractor| = {diff:.3g}")
    assert diff <= 1e-4
    # computed in float32 (devices without float64), quiet mel bins carry float32 rounding
    single = W2vBertFbankFrontend(dtype=torch.float32)(source, padding_mask)[0]
    single_diff = np.abs(single.numpy() - expected).max()
    print(f"float32 fbank: max |ours - HF| = {single_diff:.3g}")
    assert single_diff <= 1e-3


def knf_fbank(wave):
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, (wave * 2 ** 15).tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def test_unstacked_fbank_equals_kaldi_native_fbank(speech):
    waves = speech[0]
    for (wave, frames), dtype in itertools.product(zip(waves, FRAMES), (torch.float32, torch.float64)):
        expected = knf_fbank(wave)
        ours = kaldi_fbank(torch.from_numpy(wave).to(dtype) * 2 ** 15, 16000, 80).numpy()
        assert ours.shape == expected.shape == (frames, 80)
        # bins within 60 dB of their frame's peak: log energies agree relatively; quieter bins carry the float32
        # rounding of the frame's loud bins (both implementations differ from float64 there by ~5e-4 in log)
        peak = expected.max(axis=1, keepdims=True)
        strong = expected >= peak - np.log(1e3)
        relative = (np.abs(ours - expected) / np.maximum(np.abs(expected), 1.0))[strong].max()
        energy = (np.abs(np.exp(ours.astype(np.float64)) - np.exp(expected.astype(np.float64))) / np.exp(peak)).max()
        print(f"{frames} frames, {dtype}: max relative log diff {relative:.3g} (bins within 60 dB of the frame peak), "
              f"max energy diff / frame peak {energy:.3g} (all bins)")
        assert relative <= 1e-4 and energy <= 1e-4


def test_padding_awareness_alone_equals_in_batch(speech):
    waves, source, padding_mask = speech
    frontend = W2vBertFbankFrontend()
    batched, mask = frontend(source, padding_mask)
    for i, wave in enumerate(waves):
        alone, no_mask = frontend(torch.from_numpy(wave)[None])
        assert no_mask is None
        length = FRAMES[i] // 2
        assert alone.shape == (1, -(-FRAMES[i] // 2), 160)
        assert not mask[i, :length].any() and mask[i, length:].all()
        torch.testing.assert_close(batched[i, : alone.size(1)], alone[0], rtol=0, atol=1e-5)
    # HF pads frames with padding_value (1.0); the stacks past an utterance's odd last frame hold only padding
    assert (batched[2, FRAMES[2] // 2 + 1:] == 1.0).all() and (batched[2, FRAMES[2] // 2, 80:] == 1.0).all()


def test_output_lengths_equal_produced_lengths_and_hf_mask_sums(speech):
    waves, source, padding_mask = speech
    frontend = W2vBertFbankFrontend()
    _, mask = frontend(source, padding_mask)
    lengths = frontend.output_lengths(torch.tensor([len(w) for w in waves]))
    _, attention_mask = hf_features(waves)
    assert lengths.tolist() == (~mask).sum(dim=1).tolist() == attention_mask.sum(axis=1).tolist() == [65, 48, 37, 60]
    assert frontend.output_lengths(torch.tensor([0, 399, 400, 559, 560, 720])).tolist() == [0, 0, 0, 0, 1, 1]
    features, mask = frontend(torch.zeros(2, 300), torch.zeros(2, 300, dtype=torch.bool))
    assert features.shape == (2, 0, 160) and mask.shape == (2, 0)
