"""w2v-BERT 2.0 CTC fine-tuning end to end on the demo corpus: a tiny random HF ``Wav2Vec2BertModel`` →
convert_from_hf.py → fairseq-hydra-train with config/finetuning/w2v_bert_demo.yaml (model ``w2v_bert_ctc``, masking
on, a few dozen updates on four utterances, the loss falls) → the legacy infer.py (viterbi) writes fairseq's four
result files → convert_to_hf.py gives a ``Wav2Vec2BertForCTC`` whose logits on HF's own features are ours.

The run is built once per module; each test checks one stage.
"""

import glob
import json
import os
import runpy
from types import SimpleNamespace

import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")

from fairseq_lite import checkpoint_utils  # noqa: E402
from fairseq_lite.cli import hydra_train, infer  # noqa: E402
from fairseq_lite.data.labels import write_label_files  # noqa: E402
from fairseq_lite.data.manifest import write_manifest  # noqa: E402
from fairseq_lite.dataclass.initialize import compose_config, finalize_config  # noqa: E402
from fairseq_lite.tasks import setup_task  # noqa: E402
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "demo", "corpus")
UPDATES = 30
#: A tiny w2v-BERT 2.0 (the issue's shape: 32 dims, 2 layers, conv kernel 5, position clip 8/2).
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_depthwise_kernel_size=5, left_max_position_embeddings=8, right_max_position_embeddings=2,
            conformer_conv_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
CPU_RUN = ["common.log_interval=1", "common.log_format=json", "common.tensorboard_logdir=null",
           "dataset.validate_interval_updates=0", "dataset.validate_interval=1000", "dataset.max_tokens=400000"]


def script(name, *args):
    main = runpy.run_path(os.path.join(REPO, "scripts", name))["main"]
    assert main([str(a) for a in args]) == 0


def shortest_utterances(count):
    """(absolute path, frames, transcript) of the ``count`` shortest training utterances of the demo corpus."""
    transcripts = {}
    for path in glob.glob(os.path.join(CORPUS, "train", "*", "*", "*.trans.txt")):
        with open(path) as f:
            transcripts.update(line.strip().split(" ", 1) for line in f)
    files = sorted(glob.glob(os.path.join(CORPUS, "train", "*", "*", "*.flac")))
    items = sorted(((f, sf.info(f).frames) for f in files), key=lambda item: (item[1], item[0]))[:count]
    return [(f, n, transcripts[os.path.basename(f)[: -len(".flac")]]) for f, n in items]


def prepare_data(data):
    """train = valid = the four shortest utterances, with letter labels and the corpus' dict.ltr.txt."""
    utterances = shortest_utterances(4)
    root = os.path.join(CORPUS, "train")
    os.makedirs(data)
    for split in ("train", "valid"):
        write_manifest(os.path.join(data, f"{split}.tsv"), root,
                       [(os.path.relpath(f, root), n) for f, n, _ in utterances])
        write_label_files([t for _, _, t in utterances], data, split)
    with open(os.path.join(CORPUS, "dict.ltr.txt")) as src, open(os.path.join(data, "dict.ltr.txt"), "w") as dst:
        dst.write(src.read())
    return len(utterances)


def build_run(work):
    torch.manual_seed(0)
    transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig(**TINY)).save_pretrained(work / "hf")
    script("convert_from_hf.py", work / "hf", work / "w2v_bert.pt")
    data, save_dir = str(work / "data"), str(work / "ft")
    utterances = prepare_data(data)
    assert hydra_train.main([
        "--config-dir", os.path.join(REPO, "config", "finetuning"), "--config-name", "w2v_bert_demo",
        f"task.data={data}", f"model.w2v_path={work / 'w2v_bert.pt'}", f"checkpoint.save_dir={save_dir}",
        f"hydra.run.dir={work / 'run'}", f"optimization.max_update={UPDATES}", "optimization.lr=[0.003]",
        *CPU_RUN]) == 0
    checkpoint = os.path.join(save_dir, "checkpoint_last.pt")
    results = str(work / "decoded")
    assert infer.main([data, "--task", "audio_finetuning", "--labels", "ltr", "--path", checkpoint,
                       "--gen-subset", "valid", "--results-path", results, "--w2l-decoder", "viterbi",
                       "--post-process", "letter", "--cpu", "--quiet"]) == 0
    script("convert_to_hf.py", checkpoint, work / "hf_ctc")
    return SimpleNamespace(data=data, save_dir=save_dir, checkpoint=checkpoint, results=results,
                           hf_ctc=str(work / "hf_ctc"), utterances=utterances)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("w2v_bert_ctc"))


def test_fine_tuning_from_the_converted_hf_model_lowers_the_ctc_loss(run):
    with open(os.path.join(run.save_dir, "metrics.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["tag"] == "train_inner"]
    assert len(losses) == UPDATES
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first
    state = load_checkpoint_to_cpu(run.checkpoint)
    assert state["cfg"]["model"]["_name"] == "w2v_bert_ctc" and state["cfg"]["model"]["apply_mask"] is True
    assert state["cfg"]["model"]["w2v_args"]["model"]["mask_prob"] == 0.15  # the fine-tuning masking reached it
    assert state["optimizer_history"][-1]["num_updates"] == UPDATES


def test_infer_py_writes_one_line_per_utterance_in_each_result_file(run):
    for prefix in ("hypo.word", "hypo.units", "ref.word", "ref.units"):
        (path,) = glob.glob(os.path.join(run.results, f"{prefix}-*valid.txt"))
        with open(path) as f:
            lines = f.read().splitlines()
        assert len(lines) == run.utterances
        assert all(line.endswith(")") for line in lines)  # "<text> (None-<id>)", fairseq's layout
    (ref_path,) = glob.glob(os.path.join(run.results, "ref.word-*valid.txt"))
    with open(ref_path) as f:
        refs = sorted(line.rsplit(" (", 1)[0] for line in f)
    assert refs == sorted(t for _, _, t in shortest_utterances(4))


def test_the_exported_hf_model_gives_our_logits_on_hf_features(run):
    """Our w2v_bert_ctc on waveforms (fbank front end) vs HF Wav2Vec2BertForCTC on the processor's features."""
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([run.checkpoint])
    ours = models[0].eval()
    hf = transformers.Wav2Vec2BertForCTC.from_pretrained(run.hf_ctc, local_files_only=True).eval()
    processor = transformers.Wav2Vec2BertProcessor.from_pretrained(run.hf_ctc, local_files_only=True)
    waves = [sf.read(f, dtype="float32")[0] for f, _, _ in shortest_utterances(2)]
    inputs = processor(audio=waves, sampling_rate=16000, return_tensors="pt", padding=True)
    longest = max(len(w) for w in waves)
    source = torch.zeros(len(waves), longest)
    padding = torch.ones(len(waves), longest, dtype=torch.bool)
    for row, wave in enumerate(waves):
        source[row, :len(wave)], padding[row, :len(wave)] = torch.from_numpy(wave), False
    with torch.no_grad():
        net_output = ours(source=source, padding_mask=padding)
        mine = net_output["encoder_out"].transpose(0, 1)
        theirs = hf(inputs["input_features"], attention_mask=inputs["attention_mask"]).logits
    valid = inputs["attention_mask"].bool()
    assert torch.equal(~net_output["padding_mask"], valid)
    assert (mine - theirs)[valid].abs().max() <= 1e-4


def test_the_hf_blog_recipe_yaml_composes_and_its_options_reach_the_encoder(run):
    """config/finetuning/w2v_bert_2_0_ctc.yaml (HF's blog settings) over the converted model: the values, then
    layerdrop, masking (on here, as an override) and freeze_finetune_updates acting on the built w2v_bert_ctc."""
    cfg = finalize_config(compose_config(os.path.join(REPO, "config", "finetuning"), "w2v_bert_2_0_ctc", [
        f"task.data={run.data}", f"model.w2v_path={os.path.dirname(run.save_dir)}/w2v_bert.pt",
        f"checkpoint.save_dir={run.save_dir}_blog", "lr_scheduler.total_num_update=1000", "common.fp16=false",
        "common.cpu=true", "model.layerdrop=0.25", "model.apply_mask=true", "model.mask_prob=0.5",
        "model.mask_length=2", "model.freeze_finetune_updates=3"]))
    assert (cfg.optimization.lr[0], list(cfg.optimization.update_freq), cfg.dataset.batch_size) == (5e-5, [2], 16)
    assert (cfg.lr_scheduler._name, cfg.lr_scheduler.warmup_updates, cfg.optimization.max_epoch) == (
        "polynomial_decay", 500, 10)
    assert cfg.model.checkpoint_activations is True and cfg.task.normalize is False
    task = setup_task(cfg.task)
    model = task.build_model(cfg.model)
    w2v = model.w2v_encoder.w2v_model
    assert (w2v.encoder.layerdrop, w2v.masker.mask_prob, w2v.encoder.checkpoint_activations) == (0.25, 0.5, True)
    assert (len(model.w2v_encoder.adapter.layers), model.w2v_encoder.adapter.stride) == (1, 2)  # HF's add_adapter
    torch.manual_seed(0)
    source = torch.randn(2, 8000) * 0.1
    model.train()
    model(source=source, padding_mask=None)["encoder_out"].sum().backward()
    assert model.w2v_encoder.proj.weight.grad is not None
    assert all(p.grad is None for p in w2v.parameters())  # frozen for the first freeze_finetune_updates
    model.w2v_encoder.set_num_updates(3)
    model(source=source, padding_mask=None)["encoder_out"].sum().backward()
    assert w2v.post_extract_proj.weight.grad is not None and w2v.mask_emb.grad is not None  # masked frames used it
    assert model.w2v_encoder.adapter.layers[0].ffn.w_1.weight.grad is not None
