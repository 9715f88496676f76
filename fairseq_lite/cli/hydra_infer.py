"""fairseq's Hydra decoding entry point ``examples/speech_recognition/new/infer.py``, as HuBERT's and MMS's docs use it::

    python examples/speech_recognition/new/infer.py --config-dir examples/hubert/config/decode \\
        --config-name infer_viterbi task.data=/manifests task.normalize=false \\
        common_eval.path=/exp/checkpoint_best.pt common_eval.results_path=/exp/decode dataset.gen_subset=test

The yaml (fairseq's own files load as they are: ``# @package _group_``, ``???``, ``${...}`` in ``hydra.run.dir``)
is composed with the overrides on ``InferConfig`` (the usual groups plus ``decoding``) by the same Hydra loader as
``fairseq-hydra-train``. Decoding goes through infer.py's functions (``open_subset``, ``make_decoder``,
``decode_batches``, ``report``): one decoding path, two front ends. The task is the config's, as in fairseq; a
config that names none (``task.data=…`` only) takes the checkpoint's task with those keys on top.

What a run writes, with fairseq 0.12.2's names and formats:

- with ``decoding.results_path``: ``hypo.word``, ``hypo.units``, ``ref.word``, ``ref.units`` there, one
  ``<text> (None-<id>)`` line per utterance in batch order;
- the WER file ``wer`` (``wer.<n>`` with ``decoding.unique_wer_file=true``, ``n`` fairseq's hash of the ``decoding``
  settings) in ``decoding.results_path``, else in the run folder: ``WER: x``, ``err / num_ref_words = e / n``, a
  blank line and the ``decoding`` group as yaml;
- the run folder (``hydra.run.dir``, e.g. HuBERT's ``${common_eval.results_path}/viterbi``; with ``-m``,
  ``hydra.sweep.dir/hydra.sweep.subdir``): ``.hydra/config.yaml``, ``.hydra/overrides.yaml``, ``infer.log``.

It logs ``HYPO:``/``REF:`` per utterance (unless ``common_eval.quiet``), ``Processed …`` and ``Word error rate: x``.
Where fairseq goes wrong, this does not: the working directory never changes (relative paths keep their meaning;
fairseq's Hydra 1.0 moves into the run folder), results go to temporary files renamed on success (a failed rerun
keeps the earlier ones; fairseq truncates them first), ``decoding.results_path`` is created when missing (fairseq
fails), beam search without a lexicon or LM is one message (fairseq asserts), and the WER needs no CUDA. ``-m`` runs
a sweep's jobs one after another (Hydra's basic sweeper); the ax sweeper and submitit launcher are refused. The
older keys of HuBERT's README, ``decoding.decoder.<key>`` and ``decoding.exp_dir``, are read as fairseq 0.12's.
MMS: ``dataset.gen_subset=eng:dev`` as in fairseq (examples/mms/asr/config/infer_common.yaml), or ``lang=eng`` (ours);
see infer.py for where the languages, adapters and dictionaries come from.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
from typing import Any, Iterator, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from fairseq_lite.cli.common import LOG_FORMAT, check_output_dir, run_cli, setup_logging
from fairseq_lite.cli.hydra_train import job_yaml, parse_argv, write_run_dir
from fairseq_lite.cli.infer import (
    DEFAULT_DECODE_WORKERS,
    DEFAULT_MAX_TOKENS,
    RESULT_PREFIXES,
    ReportContext,
    ResultWriter,
    as_finetuning_task,
    batch_iterator,
    decode_batches,
    language_subset,
    make_decoder,
    open_subset,
    read_ctc_checkpoint,
)
from fairseq_lite.dataclass.infer_config import DecodingConfig, InferConfig
from fairseq_lite.dataclass.initialize import add_defaults, compose_config, finalize_config
from fairseq_lite.dataclass.utils import config_to_dict, describe_omegaconf_error, drop_unknown_keys
from fairseq_lite.decoding import ErrorCounter
from fairseq_lite.errors import ConfigError
from fairseq_lite.file_io import AtomicOutputs

logger = logging.getLogger("fairseq_lite.cli.hydra_infer")

#: new/infer.py's per-utterance log lines (infer.py writes ``HYPO:%s`` / ``TARGET:%s``)
HYDRA_ECHO = ("HYPO: %s", "REF: %s", "---------------------")
#: Hydra plugins fairseq's decode yamls point at (HuBERT's ax_sweep/ and run/, new/conf/hydra/sweeper/ax.yaml)
PLUGIN_OVERRIDES = {"hydra/sweeper": "the ax sweeper (hydra-ax-sweeper)", "ax_sweep": "the ax sweeper",
                    "hydra/launcher": "a Hydra launcher (submitit)", "run": "the submitit launcher"}
OLD_DECODER_PREFIX = "decoding.decoder."

HELP = """usage: new/infer.py [--config-dir DIR] [--config-name NAME] [-m] [--cfg job] [--debug] [key=value ...]

fairseq's Hydra decoding: compose DIR/NAME.yaml (e.g. examples/hubert/config/decode infer_viterbi, infer_kenlm,
infer_fsqlm) with the overrides, decode dataset.gen_subset with common_eval.path, write the WER file and, with
decoding.results_path, hypo.word/hypo.units/ref.word/ref.units.
  decoding.type=viterbi|kenlm|fairseqlm  decoding.lexicon=FILE  decoding.lmpath=FILE  decoding.beam=N
  decoding.beamthreshold=X  decoding.beamsizetoken=N  decoding.lmweight=X  decoding.wordscore=X
  decoding.silweight=X  decoding.unkweight=X  decoding.unitlm=true  decoding.nbest=N
  decoding.unique_wer_file=true  decoding.results_path=DIR
  lang=eng                 MMS: the language (dataset.gen_subset=eng:dev alike)
  -m, --multirun           run each combination of comma-separated values (dataset.gen_subset=dev,test), in turn
  --cfg job                print the composed config and exit
"""


def split_argv(argv: List[str]) -> Tuple[Any, List[str], bool]:
    """(Hydra's flags, the overrides, whether ``-m``/``--multirun`` was given)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    flags, overrides, legacy = parse_argv([a for a in argv if a not in ("-m", "--multirun")])
    if legacy:
        key, value = legacy[0]
        raise ConfigError(f"unknown flag --{key.replace('_', '-')}: new/infer.py takes overrides such as "
                          f"decoding.{key}={value} (infer.py takes the flags)")
    return flags, overrides, multirun


def _override_parts(override: str) -> Tuple[str, str, str]:
    """(prefix +/++/~, key, value) of one override."""
    body = override.lstrip("+~")
    key, _, value = body.partition("=")
    return override[: len(override) - len(body)], key, value


def refuse_plugins(overrides: List[str]) -> None:
    """Selecting HuBERT's ``ax_sweep``/``run`` sub-configs or a sweeper/launcher plugin is one clear error."""
    for override in overrides:
        _, key, value = _override_parts(override)
        if key in PLUGIN_OVERRIDES and value not in ("basic", "null"):
            raise ConfigError(f"'{override}' needs {PLUGIN_OVERRIDES[key]}, a Hydra plugin new/infer.py does not "
                              "run: decode each setting with its own command (or -m with comma-separated values)")


def translate_old_keys(overrides: List[str]) -> List[str]:
    """HuBERT's README writes the keys of fairseq's infer.py before 0.12: ``decoding.decoder.<key>`` (now
    ``decoding.<key>``, ``name`` now ``type``) and ``decoding.exp_dir=D``, whose results went to
    ``D/decode/<type>/<gen_subset>`` (now ``common_eval.results_path``, set so unless given)."""
    kept, exp_dir = [], None
    for override in overrides:
        prefix, key, value = _override_parts(override)
        if key.startswith(OLD_DECODER_PREFIX):
            field = key[len(OLD_DECODER_PREFIX):]
            new = f"{prefix}decoding.{'type' if field == 'name' else field}={value}"
            logger.info("reading %s as %s (fairseq 0.12's name)", override, new)
            kept.append(new)
        elif key == "decoding.exp_dir":
            exp_dir = value
        else:
            kept.append(override)
    if exp_dir is not None and not any(_override_parts(o)[1] == "common_eval.results_path" for o in kept):
        results = f"{exp_dir}/decode/${{decoding.type}}/${{dataset.gen_subset}}"
        logger.info("reading decoding.exp_dir=%s as common_eval.results_path=%s", exp_dir, results)
        kept.append(f"common_eval.results_path={results}")
    return kept


def sweep_jobs(overrides: List[str]) -> List[List[str]]:
    """Hydra's basic sweeper: the override lists of every combination of sweep values (``a,b``, ``range(…)``),
    the last key varying fastest."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*choices)]


def register_env_resolver() -> None:
    """fairseq's yamls write ``${env:USER}`` (OmegaConf 2.0's resolver; 2.3 has ``oc.env``): the same meaning."""
    if not OmegaConf.has_resolver("env"):
        OmegaConf.register_new_resolver("env", _environment_variable)


def _environment_variable(name: str, default: Optional[str] = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise ConfigError(f"environment variable {name} is not set (${{env:{name}}} in the config): set it, or "
                          "override the key that uses it")
    return value


def check_mandatory(composed: DictConfig) -> None:
    """Every ``???`` of the job config (HuBERT's yamls leave ``task.data``, ``common_eval.path``,
    ``common_eval.results_path``, ``dataset.gen_subset`` … to the command line) is given: else one error naming it."""
    for key in composed:
        if key == "hydra" or not isinstance(composed[key], DictConfig):
            continue
        try:
            OmegaConf.to_container(composed[key], resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(describe_omegaconf_error(exc)) from None


def run_folder(composed: DictConfig, multirun: bool) -> str:
    """The resolved ``hydra.run.dir`` (``hydra.sweep.dir/hydra.sweep.subdir`` for a ``-m`` job)."""
    hydra = composed.hydra
    try:
        if multirun:
            return os.path.join(str(hydra.sweep.dir), str(hydra.sweep.subdir))
        return str(hydra.run.dir)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve the run folder: {describe_omegaconf_error(exc)}") from None


def has_task_name(composed: DictConfig) -> bool:
    task = composed.get("task")
    return isinstance(task, DictConfig) and task.get("_name") is not None


def fill_task_from_checkpoint(composed: DictConfig, checkpoint: Tuple[str, dict]) -> None:
    """No task named in the config: the checkpoint's task (keys fairseq_lite lacks dropped), with the config's task
    keys (``task.data=…``) on top (fairseq's new/infer.py fails on ``task: null``)."""
    from fairseq_lite.tasks import TASK_REGISTRY

    saved = as_finetuning_task(dict(checkpoint[1]["cfg"].get("task") or {}))
    dropped = drop_unknown_keys(TASK_REGISTRY.get_dataclass(TASK_REGISTRY.name_of(saved)), saved, "task")
    if dropped:
        logger.warning("dropping the checkpoint's task keys unknown to fairseq_lite: %s", ", ".join(dropped))
    task = composed.get("task")
    user = OmegaConf.to_container(task, resolve=False) if isinstance(task, DictConfig) else {}
    with open_dict(composed):
        composed.task = {**saved, **user}
    logger.info("task %s from %s, with task.%s from the command line", saved.get("_name"), checkpoint[0],
                ", task.".join(user) or "nothing")


def infer_config(composed: DictConfig) -> Tuple[InferConfig, Optional[Tuple[str, dict]]]:
    """(the finalised InferConfig of a composed config without its ``hydra`` node, the ``read_ctc_checkpoint``
    result when the checkpoint had to be read for its task, else None)."""
    checkpoint = None
    if has_task_name(composed):
        as_finetuning_task(composed.task)
    else:
        try:
            path = composed.common_eval.path
        except OmegaConfBaseException as exc:
            raise ConfigError(describe_omegaconf_error(exc)) from None
        if not path:
            raise ConfigError("new/infer.py needs common_eval.path=/path/to/checkpoint.pt")
        checkpoint = read_ctc_checkpoint(composed)
        fill_task_from_checkpoint(composed, checkpoint)
    cfg = finalize_config(composed)
    cfg.dataset.gen_subset = language_subset(cfg.dataset.gen_subset, cfg.lang, "lang=")
    check_values(cfg)
    return cfg, checkpoint


def check_values(cfg: InferConfig) -> None:
    """What new/infer.py needs before it loads anything; each failure names its key."""
    cfg.decoding.check_values(cfg)
    if not cfg.common_eval.path:
        raise ConfigError("new/infer.py needs common_eval.path=/path/to/checkpoint.pt")
    if cfg.distributed_training.distributed_world_size > 1 or cfg.dataset.num_shards > 1:
        raise ConfigError("new/infer.py decodes a subset in one process: set distributed_training."
                          "distributed_world_size=1 (split a large subset with infer.py --num-shards/--shard-id)")
    if cfg.decoding.results_path:
        check_output_dir(cfg.decoding.results_path, "decoding.results_path")
    if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
        cfg.dataset.max_tokens = DEFAULT_MAX_TOKENS


def flashlight_config(decoding: DecodingConfig, vocab_size: int) -> Optional[Any]:
    """flashlight.DecoderConfig of the ``decoding`` group (None for viterbi); ``beamsizetoken`` unset means the
    whole dictionary, as in fairseq."""
    if decoding.type == "viterbi":
        return None
    from fairseq_lite.decoding.flashlight import DecoderConfig

    return DecoderConfig(nbest=decoding.nbest, beam=decoding.beam, beam_threshold=decoding.beamthreshold,
                         beam_size_token=decoding.beamsizetoken or vocab_size, lm_weight=decoding.lmweight,
                         word_score=decoding.wordscore, unk_weight=decoding.unkweight, sil_weight=decoding.silweight,
                         lexicon=decoding.lexicon, kenlm_model=decoding.lmpath, unit_lm=decoding.unitlm)


def decoding_yaml(decoding: DecodingConfig) -> str:
    """``OmegaConf.to_yaml(cfg.decoding)`` as fairseq writes it into the WER file and hashes it for
    ``unique_wer_file``: fairseq's field order, an unset ``lmpath`` shown as fairseq's ``???`` default."""
    values = config_to_dict(decoding)
    if values["lmpath"] is None:
        values["lmpath"] = "???"
    return OmegaConf.to_yaml(OmegaConf.create(values))


def wer_path(decoding: DecodingConfig, run_dir: str, settings: str) -> str:
    """fairseq's ``get_wer_file``: ``wer`` or ``wer.<md5 of the settings mod 10^6>``, in results_path or the run folder."""
    name = "wer"
    if decoding.unique_wer_file:
        name += f".{int(hashlib.md5(settings.encode('utf-8')).hexdigest(), 16) % 1000000}"
    return os.path.join(decoding.results_path or run_dir, name)


def decode(cfg: InferConfig, run_dir: str, checkpoint: Optional[Tuple[str, dict]] = None) -> float:
    """Decode ``dataset.gen_subset`` and write the result files and the WER file; returns the WER."""
    task, dataset, task_cfg, emitter = open_subset(cfg, checkpoint=checkpoint)
    tgt_dict, decoding = task.target_dictionary, cfg.decoding
    decoder = make_decoder(decoding.type, tgt_dict, flashlight_config(decoding, len(tgt_dict)), decoding.lmpath,
                           lm_key="decoding.lmpath")
    context = ReportContext(tgt_dict, cfg, ErrorCounter(), None, emitter.stride / task_cfg.sample_rate, dataset,
                            HYDRA_ECHO)
    settings = decoding_yaml(decoding)
    with AtomicOutputs() as outputs:
        if decoding.results_path:
            context.writer = ResultWriter(outputs, {key: os.path.join(decoding.results_path, name)
                                                    for key, name in RESULT_PREFIXES.items()})
        with tqdm(total=len(dataset), desc="infer", unit="utt", disable=cfg.common.no_progress_bar) as progress:
            sentences, tokens, elapsed = decode_batches(batch_iterator(task, dataset, cfg), emitter.of_batch, decoder,
                                                        DEFAULT_DECODE_WORKERS, context, progress)
        elapsed = max(elapsed, 1e-9)
        logger.info("Processed %d sentences (%d tokens) in %.1fs %.2f sentences per second, %.2f tokens per second)",
                    sentences, tokens, elapsed, sentences / elapsed, tokens / elapsed)
        counter = context.counter
        with outputs.open(wer_path(decoding, run_dir, settings), "w", encoding="utf-8") as f:
            f.write(f"WER: {counter.wer}\nerr / num_ref_words = {counter.word_errors} / {counter.word_total}\n\n"
                    f"{settings}")
    logger.info("Word error rate: %.4f", counter.wer)
    return counter.wer


@contextlib.contextmanager
def run_log(run_dir: str) -> Iterator[None]:
    """Within the block, the log also goes to ``run_dir/infer.log`` (Hydra's job log file)."""
    os.makedirs(run_dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(run_dir, "infer.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def run_job(config_dir: Optional[str], config_name: Optional[str], overrides: List[str],
            sweep_job: Optional[int] = None) -> float:
    """Compose, check and decode one job (``sweep_job``: its number in a ``-m`` sweep); returns the WER."""
    extra = [] if sweep_job is None else [f"hydra.job.num={sweep_job}"]
    composed = compose_config(config_dir, config_name, overrides + extra, schema=InferConfig, with_hydra=True)
    check_mandatory(composed)
    run_dir = run_folder(composed, sweep_job is not None)
    with open_dict(composed):
        del composed["hydra"]
    cfg, checkpoint = infer_config(composed)
    check_output_dir(run_dir, "hydra.run.dir")
    with run_log(run_dir):
        write_run_dir(run_dir, cfg, overrides)
        logger.info("decoding %s of %s with %s into %s", cfg.dataset.gen_subset, cfg.common_eval.path,
                    cfg.decoding.type, run_dir)
        return decode(cfg, run_dir, checkpoint)


def main(argv: List[str], default_config_dir: Optional[str] = None) -> Optional[int]:
    """new/infer.py's command line; ``default_config_dir`` holds ``infer.yaml`` (fairseq's ``new/conf``) for the
    script, which uses it when ``--config-name`` is not given."""
    flags, overrides, multirun = split_argv(argv)
    if flags.help:
        print(HELP)
        return 0
    setup_logging()
    refuse_plugins(overrides)
    overrides = translate_old_keys(overrides)
    register_env_resolver()
    config_dir, config_name = flags.config_dir, flags.config_name
    if config_name is None:
        if default_config_dir is None or config_dir is not None:
            raise ConfigError("give --config-dir and --config-name, e.g. --config-dir examples/hubert/config/decode "
                              "--config-name infer_viterbi")
        config_dir, config_name = default_config_dir, "infer"
    if flags.cfg is not None:
        print(job_yaml(add_defaults(compose_config(config_dir, config_name, overrides, schema=InferConfig))))
        return 0
    jobs = sweep_jobs(overrides) if multirun else [overrides]
    for number, job in enumerate(jobs):
        if multirun:
            logger.info("job %d of %d: %s", number + 1, len(jobs), " ".join(job))
        run_job(config_dir, config_name, job, number if multirun else None)
    return 0


def cli_main(default_config_dir: Optional[str] = None) -> None:
    run_cli(lambda argv: main(argv, default_config_dir))


if __name__ == "__main__":
    cli_main()
