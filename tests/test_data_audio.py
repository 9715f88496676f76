"""Audio reading, FileAudioDataset and AddTargetDataset on real files written by the tests."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_lite.data.add_target_dataset import AddTargetDataset, LabelTable
from fairseq_lite.data import audio
from fairseq_lite.data.audio import audio_frames, read_audio
from fairseq_lite.data.raw_audio_dataset import AudioAugmentation, FileAudioDataset
from fairseq_lite.errors import DataError

RATE = 16000


def tone(n, rate=RATE, channels=1):
    t = np.arange(n) / rate
    wav = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


def write_m4a(path, wav, rate):
    av = pytest.importorskip("av")
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wav[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3", "m4a"])
def test_read_every_format(tmp_path, ext):
    path = tmp_path / f"a.{ext}"
    wav = tone(8000)
    if ext == "m4a":
        write_m4a(path, wav, RATE)
    else:
        sf.write(path, wav, RATE)
    frames, rate = audio_frames(str(path))
    out = read_audio(str(path), RATE)
    assert rate == RATE and out.dtype == np.float32
    assert abs(len(out) - 8000) <= 2048 and frames == len(out)  # lossy codecs may pad a frame
    if ext in ("wav", "flac"):
        np.testing.assert_allclose(out, wav, atol=1e-4)


def test_stereo_is_averaged_and_other_rates_resampled(tmp_path, caplog, monkeypatch):
    stereo = np.stack([tone(8000), np.zeros(8000, np.float32)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, RATE)
    np.testing.assert_allclose(read_audio(str(tmp_path / "s.wav"), RATE), tone(8000) / 2, atol=1e-4)
    sf.write(tmp_path / "r.wav", tone(8000, rate=8000), 8000)
    monkeypatch.setattr(audio, "_logged_rates", set())  # as in a fresh process
    with caplog.at_level(logging.WARNING):
        out = read_audio(str(tmp_path / "r.wav"), RATE)
        read_audio(str(tmp_path / "r.wav"), RATE)
    assert len(out) == 16000
    np.testing.assert_allclose(out[1000:-1000], tone(16000)[1000:-1000], atol=2e-3)  # the same 440 Hz tone
    assert sum("8000 Hz" in r.message for r in caplog.records) == 1  # logged once per rate
    with pytest.raises(DataError, match="sample rate 8000 Hz, expected 16000 Hz"):
        read_audio(str(tmp_path / "r.wav"), RATE, strict=True)


def test_byte_range_paths(tmp_path):
    sf.write(tmp_path / "a.wav", tone(4000), RATE)
    blob = tmp_path / "blob.zip"
    data = (tmp_path / "a.wav").read_bytes()
    blob.write_bytes(b"x" * 100 + data + b"y" * 50)
    out = read_audio(f"{blob}:100:{len(data)}", RATE)
    np.testing.assert_allclose(out, tone(4000), atol=1e-4)


def write_corpus(tmp_path, lengths, ext="flac", name="train"):
    for i, n in enumerate(lengths):
        sf.write(tmp_path / f"u{i}.{ext}", tone(n) * (i + 1) / len(lengths), RATE)
    manifest = tmp_path / f"{name}.tsv"
    manifest.write_text(f"{tmp_path}\n" + "".join(f"u{i}.{ext}\t{n}\n" for i, n in enumerate(lengths)))
    return str(manifest)


def test_crop_to_shortest_for_pretraining(tmp_path):
    ds = FileAudioDataset(write_corpus(tmp_path, [3000, 5000, 4000]), RATE, max_sample_size=3500, min_sample_size=3500)
    assert len(ds) == 2 and ds.skipped_indices.tolist() == [0]
    batch = ds.collater([ds[0], ds[1]])
    assert batch["id"].tolist() == [0, 1] and batch["net_input"]["source"].shape == (2, 3500)
    assert "padding_mask" not in batch["net_input"]
    again = ds.collater([ds[0], ds[1]])
    assert torch.equal(batch["net_input"]["source"], again["net_input"]["source"])  # crops seeded by (seed, epoch, ids)
    assert ds.num_tokens_vec(np.array([0, 1])).tolist() == [3500, 3500]
    assert ds.collater([]) == {}


def test_padding_mask_normalize_and_buckets(tmp_path):
    manifest = write_corpus(tmp_path, [1000, 2500, 4000, 6000])
    ds = FileAudioDataset(manifest, RATE, pad=True, normalize=True)
    batch = ds.collater([ds[0], ds[2]])
    mask = batch["net_input"]["padding_mask"]
    assert batch["net_input"]["source"].shape == (2, 4000) and mask.dtype == torch.bool
    assert mask[0].sum() == 3000 and not mask[1].any()
    src = batch["net_input"]["source"][1]
    assert abs(float(src.mean())) < 1e-3 and abs(float(src.std()) - 1) < 1e-2
    bucketed = FileAudioDataset(manifest, RATE, pad=True, num_buckets=2)
    assert bucketed.buckets.tolist() == [2500, 6000]
    assert bucketed.collater([bucketed[0]])["net_input"]["source"].shape == (1, 2500)
    assert bucketed.collater([bucketed[0], bucketed[2]])["net_input"]["source"].shape == (2, 6000)
    assert bucketed.num_tokens_vec(np.arange(4)).tolist() == [2500, 2500, 6000, 6000]
    with pytest.raises(DataError, match="needs padding"):
        FileAudioDataset(manifest, RATE, num_buckets=2)


def test_augmentation_is_reproducible(tmp_path):
    manifest = write_corpus(tmp_path, [4000])
    aug = AudioAugmentation(noise_prob=1.0, snr_min_db=10, snr_max_db=10, shift_max_ms=20, gain_max_db=6)
    a = FileAudioDataset(manifest, RATE, augment=aug, seed=5)
    plain = FileAudioDataset(manifest, RATE)[0]["source"]
    x, y = a[0]["source"], a[0]["source"]
    assert torch.equal(x, y) and not torch.allclose(x, plain)
    a.set_epoch(2)
    assert not torch.equal(a[0]["source"], x)


def test_missing_corrupt_and_empty_files(tmp_path, caplog):
    manifest = write_corpus(tmp_path, [2000, 2000, 2000, 2000])
    (tmp_path / "u1.flac").unlink()
    with pytest.raises(DataError, match=r"train.tsv:3: audio file .*u1.flac does not exist \(1 of 4"):
        FileAudioDataset(manifest, RATE)
    (tmp_path / "u1.flac").write_bytes(b"not audio at all" * 10)
    sf.write(tmp_path / "u2.flac", np.zeros(0, np.float32), RATE, format="WAV")  # a valid header, no samples
    ds = FileAudioDataset(manifest, RATE)
    with pytest.raises(DataError, match=r"train.tsv:3: .*u1.flac: cannot decode audio"):
        ds[1]
    with pytest.raises(DataError, match=r"train.tsv:4: .*u2.flac: the file holds no audio samples"):
        ds[2]
    (tmp_path / "u3.flac").unlink()
    skipping = FileAudioDataset(manifest, RATE, skip_invalid=True, pad=True)
    assert len(skipping) == 3 and skipping.skipped_indices.tolist() == [3]
    with caplog.at_level(logging.WARNING):
        batch = skipping.collater([skipping[i] for i in range(3)])
    assert batch["id"].tolist() == [0] and skipping.bad_files == 2


def test_bad_manifest_lines(tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text(f"{tmp_path}\na.flac 1000\n")
    with pytest.raises(DataError, match=r"train.tsv:2: expected 'relative/path<TAB>num_samples'"):
        FileAudioDataset(str(bad), RATE)
    with pytest.raises(DataError, match="does not exist"):
        FileAudioDataset(str(tmp_path / "nope.tsv"), RATE)


def test_add_target_dataset_collates_fairseq_keys(tmp_path):
    audio = FileAudioDataset(write_corpus(tmp_path, [1000, 3000]), RATE, pad=True)
    labels = LabelTable([torch.tensor([4, 5, 6], dtype=torch.int32), torch.tensor([7], dtype=torch.int32)])
    ds = AddTargetDataset(audio, labels, pad=1, eos=2)
    batch = ds.collater([ds[0], ds[1]])
    assert batch["target"].tolist() == [[4, 5, 6], [7, 1, 1]] and batch["target"].dtype == torch.long
    assert batch["target_lengths"].tolist() == [3, 1] and batch["ntokens"] == 4
    assert ds.size(0) == (1000, 3)
    auto = AddTargetDataset(audio, labels, pad=1, eos=2, add_to_input=True).collater([ds[1]])
    assert auto["target"].tolist() == [[7, 2]] and auto["net_input"]["prev_output_tokens"].tolist() == [[2, 7]]
