"""Building the sandbox: corpus, tokenizer, tiny Qwen2 base model, property report.

Layout of a built sandbox (``runs/sandbox/<corpus hash>/``)::

    corpus.jsonl      the corpus, like any user corpus (id, text + ground-truth fields)
    probe.jsonl       held-out probe entities (never in the corpus nor in pre-training)
    model/            HF folder (config, safetensors, tokenizer) that transformers and vLLM load
    properties.json   the measured sandbox properties (a)-(c) on the probe entities
    manifest.json     written last: what was built, from which recipe, with sha256s

The model depends only on the world seed and the pre-training recipe (``RECIPE``), not on the
corpus sizes, so the trained model for seed 0 ships with the package
(``harness/assets/sandbox-model``) and a fresh machine does not pay the pre-training;
``--from-scratch`` reproduces it from the recipe and re-checks the properties.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

from harness.config import SandboxSpec, load_spec, stable_hash
from harness.sandbox import world as W
from harness.fileio import atomic_dir, sha256_file

ASSET = Path(__file__).resolve().parents[1] / "assets" / "sandbox-model"


@dataclasses.dataclass(frozen=True)
class PretrainRecipe:
    """How the sandbox base model is made. All values are ours (DESIGN §5)."""
    version: int = 4
    vocab_size: int = 6144        # BPE target; names and values end up single tokens
    layers: int = 2
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 384
    context: int = 512            # the base context; extension goes beyond it
    rope_theta: float = 10000.0
    init_std: float = 0.1         # initializer_range (Qwen2's 0.02 left copying unlearned)
    steps: int = 5000             # phase 1, the copy warm-up included
    micro_batch: int = 8
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    max_gap_sentences: int = 12   # distance curriculum: filler between profile and reference
    curriculum_fraction: float = 0.6  # share of steps over which the gap grows to its max
    drill_fraction: float = 0.3   # fact drills among pre-training rows after the warm-up
    drill_warmup_steps: int = 400  # the first steps train on fact drills only
    # cumulative shares of episode kinds: profile+reference, look-alike pair+reference; the
    # rest are references alone
    episode_mix: tuple[float, float] = (0.6, 0.8)
    tokenizer_texts: int = 5000
    # Version 4: copying by content (an induction head) is taught first. Phase 1 opens with
    # ``copy_warmup_steps`` of slice copying only (``copy_rows``: a random sequence of lexicon
    # words and digits, then a random slice of it, loss on the slice), and every phase after
    # keeps ``copy_share`` of its rows on it. Version 3 never learned to copy a string seen
    # once, so RULER's seven-digit answers were guessed; slice copying formed the head in a
    # fresh model of this shape (phase change at steps 1,100-1,700), but not from version 3's
    # weights in 2,500 steps (docs/sandbox.md, "copying").
    copy_warmup_steps: int = 2000
    copy_share: float = 0.2
    copy_len: tuple[int, int] = (20, 60)    # sequence length, drawn uniformly
    copy_slice: tuple[int, int] = (8, 30)   # slice length, drawn uniformly (at most the sequence)
    copy_digit_share: float = 0.5           # each token is a digit with this probability
    # Version 3: a second phase from the first one's weights, with a fresh optimizer and
    # schedule and fresh rows at the full distance (their own seed streams). In version 2, (b)
    # levelled off at 0.45-0.5 as phase 1's learning rate decayed (docs/sandbox.md).
    continue_steps: int = 2000
    continue_lr: float = 2e-3
    continue_warmup_steps: int = 50
    continue_stream_offset: int = 1000
    # A third phase (0 steps = off): the benchmarks' own formats within the base context, RULER
    # niah prompts and LongBench-v2 multiple-choice prompts with their answers, from entities
    # that are not the probe's (``format_pretraining``). Every ``format_retain_every``-th step
    # is a batch of phase 2's mix, so that the planted-fact copying is kept.
    format_steps: int = 1000
    format_lr: float = 1e-3
    format_warmup_steps: int = 20
    format_retain_every: int = 4
    format_mc_share: float = 0.4      # multiple-choice examples among the format examples
    format_seed_offset: int = 2000
    # What a one-pass multiple-choice example's answer is (``mc_examples``): ``letter`` (version
    # 4: `` (B)``), or, tried and not adopted, the value first and then the official answer
    # line, which the official extraction finds anywhere in the response (``value``:
    # `` <value>. The correct answer is (B).``; ``fact``: `` <First> <Last> keeps the <attr>
    # <value>. The correct answer is (B).``). Ours: LongBench-v2 fixes no response.
    format_mc_answer: str = "letter"
    # The one-pass prompt of phase 3's multiple-choice examples and drills (ours, a trial):
    # ``completion`` (version 4), the official text then ``The correct answer is``, which the
    # response continues; ``open``, the official text alone (``longbench_v2`` ``params.prompt:
    # open``), the response writing the whole answer line, so that the answer line's words
    # stand once before the letter (docs/sandbox.md, "The value after the format line");
    # ``open-spaced``, the same prompt, the response starting with a space (a word is then the
    # one token it is in the document; docs/sandbox.md, "The open prompt's split words"). A
    # model trained with either is to be evaluated with ``params.prompt: open``.
    format_mc_prompt: str = "completion"
    # Share of phase 3's format rows that are rows of in-place letter drills (``mc_drills``; 0 =
    # none, version 4; ours, a trial): the tail of a one-pass prompt, the planted fact as the
    # ``fact`` form states it (the value alone where ``format_mc_answer`` is ``value``), and
    # the answer line, the loss on its letter alone, so that the second hop (value to letter)
    # is taught densely where the one-pass response takes it.
    format_drill_share: float = 0.0
    # How the drill rows are trained (ours, a trial): ``rows`` (the first trials), spread among
    # the other format rows, the loss on the letter and what follows it; ``steps``, whole
    # batches of drill rows (steps of their own) with the loss on the letter alone, so that
    # each drill step's gradient is the letters' only, as in the drill alone
    # (``scripts/sandbox_letter_drill.py``), which learned the hop.
    format_drill_mode: str = "rows"
    # A fourth phase (0 steps = off; tried and not adopted, so the recipe stays version 4), from
    # phase 3's weights: LongBench-v2's two-pass chain of thought on the multiple-choice set
    # (``cot_examples``). Its first pass writes the planted fact (``<First> <Last> keeps the
    # <attr> <value>.``, the world's own wording), the second picks the letter of the choice
    # that the written fact states. In one pass (phase 3) the 2-layer model answered one letter
    # for every item; with phase 4 neither pass was learned in 500 steps, nor the second alone in
    # 1,000 (docs/sandbox.md, "The multiple-choice set: two hops"). The rest of the examples are
    # RULER's (as in phase 3) and every ``format_retain_every``-th step phase 2's mix.
    cot_steps: int = 0
    cot_lr: float = 1e-3
    cot_warmup_steps: int = 20
    cot_mc_share: float = 0.6         # CoT examples (each pass one) among the phase's examples
    cot_seed_offset: int = 4000
    cot_passes: str = "both"          # "answer" or "cot": that pass's examples only (trials)
    # Stages after phases 3 and 4 (none = off; ours, docs/sandbox.md), in order, each from the
    # previous one's weights with a fresh optimizer and schedule: ``{"drill": FORM, "steps":
    # N}`` trains in-place letter drills alone (``drill_stage``; FORM one of
    # ``DRILL_STAGE_FORMS``), the loss on the letter (with ``"copy_every": K``, a batch of
    # phase 1's slice copying at every K-th step instead); ``{"mix": {FIELD: VALUE, ...}, "steps":
    # N}`` runs phase 3 again, ``format_steps`` N and those fields (``format_*``, or
    # ``STAGE_MIX_FIELDS``) changed from this recipe's (``format_pretraining``). So a chain of
    # trial runs (``scripts/sandbox_letter_drill.py``, ``scripts/sandbox_format_phase.py``) is
    # a recipe that a build repeats.
    stages: tuple = ()


RECIPE = PretrainRecipe()


def world_spec(s: SandboxSpec) -> W.WorldSpec:
    return W.WorldSpec(seed=s.seed, n_entities=s.n_entities,
                       lookalike_fraction=s.lookalike_fraction, n_filler_docs=s.n_filler_docs,
                       n_probe_entities=s.n_probe_entities)


# Recipe fields added after version 4, with the defaults that leave version 4's key unchanged
ADDED_AFTER_VERSION_4 = {"format_mc_answer": "letter", "format_mc_prompt": "completion",
                         "format_drill_share": 0.0, "format_drill_mode": "rows", "stages": ()}


def model_key(s: SandboxSpec, recipe: PretrainRecipe | None = None) -> str:
    """The model's identity: the world seed and the recipe (the settings of a part that is
    off do not count, so adding an optional part leaves an older model's key as it was)."""
    r = dataclasses.asdict(recipe or RECIPE)
    for key, default in ADDED_AFTER_VERSION_4.items():   # at its default a field keeps the key
        if r[key] == default or (isinstance(default, tuple) and list(r[key]) == list(default)):
            del r[key]
    if not r["format_steps"]:
        r = {k: v for k, v in r.items() if not k.startswith("format_")}
    if not r["cot_steps"]:
        r = {k: v for k, v in r.items() if not k.startswith("cot_")}
    if not r["copy_warmup_steps"] and not r["copy_share"]:
        r = {k: v for k, v in r.items() if not k.startswith("copy_")}
    return stable_hash({"seed": s.seed, "recipe": r})


def model_identity(spec) -> str:
    """The base model's identity for a spec with ``model.path: sandbox`` (the registry's
    ``model_source`` entry): the model key of its sandbox section."""
    return model_key(spec.sandbox)


def sandbox_spec_from(spec_path: str | None, overrides: list[str]) -> SandboxSpec:
    if spec_path is None:
        if overrides:
            from harness.config import SpecError
            raise SpecError("--override needs --spec (it overrides keys of a spec file)")
        return SandboxSpec()
    return load_spec(spec_path, overrides).sandbox


def _log(msg: str) -> None:
    print(f"[sandbox] {msg}", file=sys.stderr, flush=True)


def train_sandbox_tokenizer(s: SandboxSpec, out_dir: Path, recipe: PretrainRecipe | None = None):
    from harness.sandbox.tokenizer import train_tokenizer

    recipe = recipe or RECIPE
    ws = world_spec(s)
    lexicon = " ".join(W.World(ws).lexicon())
    texts = list(itertools.islice(W.pretraining_texts(ws, 0, recipe.max_gap_sentences),
                                  recipe.tokenizer_texts))
    # Every name and value 20 times, so that each becomes a single token.
    return train_tokenizer(texts + [lexicon] * 20, recipe.vocab_size, out_dir,
                           model_max_length=1 << 20)


def pretraining_rows(s: SandboxSpec, tokenizer, recipe: PretrainRecipe | None = None,
                     stream_offset: int = 0):
    """All pre-training rows, in order: the filler gap grows with the row index (curriculum).

    ``stream_offset`` shifts the seeds of the text streams (phase 2 draws fresh rows)."""
    import numpy as np
    from harness.training.packing import pack_stream

    recipe = recipe or RECIPE
    if not 0 <= recipe.drill_warmup_steps < recipe.steps:
        raise ValueError(f"recipe: drill_warmup_steps ({recipe.drill_warmup_steps}) must be "
                         f"below steps ({recipe.steps})")
    if recipe.drill_warmup_steps:
        # drills only first (copying forms there), then the mix, with its own curriculum
        w = recipe.drill_warmup_steps
        head = pretraining_rows(s, tokenizer, dataclasses.replace(
            recipe, steps=w, drill_fraction=1.0, drill_warmup_steps=0))
        tail = pretraining_rows(s, tokenizer, dataclasses.replace(
            recipe, steps=recipe.steps - w, drill_warmup_steps=0))
        return np.concatenate([head[0], tail[0]]), np.concatenate([head[1], tail[1]])
    ws = world_spec(s)
    n_rows = recipe.steps * recipe.micro_batch
    ramp = max(1, int(recipe.curriculum_fraction * n_rows))

    def groups():
        made, streams = 0, {}
        while True:
            # Rows hold ~3 episodes at 512 tokens, so ``made / 3`` approximates the row index.
            gap = 1 + int(recipe.max_gap_sentences * min(1.0, made / 3 / ramp))
            stream = streams.setdefault(gap, W.pretraining_texts(
                ws, gap + stream_offset, gap, recipe.drill_fraction, tuple(recipe.episode_mix)))
            texts = list(itertools.islice(stream, 64))
            made += len(texts)
            yield from tokenizer(texts)["input_ids"]

    rows = list(itertools.islice(pack_stream(groups(), recipe.context, tokenizer.eos_token_id),
                                 n_rows))
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def copy_rows(s: SandboxSpec, tokenizer, n_rows: int, recipe: PretrainRecipe | None = None,
              seed: int = 0):
    """``n_rows`` rows of slice copying, ``(ids, pos, pad)``: a random sequence of single-token
    lexicon words and digits (``recipe.copy_len`` tokens, a digit with probability
    ``copy_digit_share``), then a random slice of it (``copy_slice``), then EOS; only the slice
    and EOS carry loss. Copying a slice pays only by content (the slice starts anywhere), which
    is what forms an induction head; a repeat of the whole sequence can be learned by position
    instead (docs/sandbox.md). The task is ours."""
    import random

    import numpy as np

    recipe = recipe or RECIPE
    T, eos = recipe.context, tokenizer.eos_token_id
    from harness.sandbox.properties import copy_pools

    pools = copy_pools(tokenizer, W.World(world_spec(s)).lexicon())
    words, digits = pools["words"], pools["digits"]
    (lo, hi), (k_lo, k_hi) = recipe.copy_len, recipe.copy_slice
    if not (len(words) > 1 and 0 < k_lo <= k_hi and k_lo <= lo <= hi and 2 * hi + 1 <= T):
        raise ValueError(f"recipe: copy_len {recipe.copy_len} / copy_slice {recipe.copy_slice} "
                         f"do not fit a {T}-token row (or the tokenizer has no single-token "
                         f"lexicon words)")
    rng = random.Random(f"copy-{s.seed}-{seed}")
    ids = np.full((n_rows, T), eos, dtype=np.int64)
    pos, pad = np.zeros((n_rows, T), dtype=np.int64), np.ones((n_rows, T), dtype=bool)
    for row in range(n_rows):
        fill = 0
        while True:
            n = rng.randint(lo, hi)
            seq = [rng.choice(digits) if rng.random() < recipe.copy_digit_share
                   else rng.choice(words) for _ in range(n)]
            k = rng.randint(k_lo, min(k_hi, n))
            i = rng.randint(0, n - k)
            ex = seq + seq[i:i + k] + [eos]
            if fill + len(ex) > T:
                break
            ids[row, fill:fill + len(ex)] = ex
            pos[row, fill:fill + len(ex)] = np.arange(len(ex))
            pad[row, fill + n - 1:fill + len(ex)] = False   # the sequence's last token predicts
            fill += len(ex)
    return ids, pos, pad


def mixed_rows(s: SandboxSpec, tokenizer, recipe: PretrainRecipe | None = None,
               stream_offset: int = 0, copy_warmup: int = 0):
    """A phase's rows, ``(ids, pos, pad)``: ``copy_warmup`` steps of slice copying only, then
    ``pretraining_rows`` for the remaining steps with a ``copy_share`` of them (spread evenly)
    replaced by slice copying from a stream of their own."""
    import numpy as np

    recipe = recipe or RECIPE
    B = recipe.micro_batch
    if not 0 <= copy_warmup < recipe.steps:
        raise ValueError(f"recipe: the copy warm-up ({copy_warmup} steps) must be below the "
                         f"phase's steps ({recipe.steps})")
    if not 0 <= recipe.copy_share < 1:
        raise ValueError(f"recipe: copy_share must be in [0, 1), got {recipe.copy_share}")
    ids, pos = pretraining_rows(s, tokenizer, dataclasses.replace(
        recipe, steps=recipe.steps - copy_warmup), stream_offset)
    pad = np.zeros(ids.shape, dtype=bool)
    if recipe.copy_share:
        n = len(ids)
        at = np.flatnonzero(np.floor((np.arange(n) + 1) * recipe.copy_share)
                            > np.floor(np.arange(n) * recipe.copy_share))
        c = copy_rows(s, tokenizer, len(at), recipe, seed=stream_offset + 1)
        ids[at], pos[at], pad[at] = c
    if copy_warmup:
        c = copy_rows(s, tokenizer, copy_warmup * B, recipe, seed=stream_offset)
        ids, pos, pad = (np.concatenate([a, b]) for a, b in zip(c, (ids, pos, pad)))
    return ids, pos, pad


def continue_pretraining(s: SandboxSpec, model, tokenizer, recipe: PretrainRecipe | None = None,
                         log=None, state: Path | None = None) -> None:
    """Phase 2 of the recipe, in place on ``model`` (phase 1's weights); ``state``: see
    ``train_phase``."""
    from harness.training.loop import LoopSettings

    recipe = recipe or RECIPE

    def rows():
        r = dataclasses.replace(recipe, steps=recipe.continue_steps, drill_warmup_steps=0,
                                curriculum_fraction=1e-6)   # the full distance from the start
        ids, pos, pad = mixed_rows(s, tokenizer, r, stream_offset=recipe.continue_stream_offset)
        _log(f"phase 2: {ids.size:,} tokens ({recipe.continue_steps} steps)")
        return ids, pos, pad

    settings = LoopSettings(steps=recipe.continue_steps, micro_batch=recipe.micro_batch,
                            grad_accum=1, lr=recipe.continue_lr,
                            warmup_steps=recipe.continue_warmup_steps,
                            min_lr_ratio=recipe.min_lr_ratio, log_every=50, seed=s.seed + 1)
    train_phase(model, rows, settings, log, state)


# A resumable build (``pretrain(state_dir=...)``) saves each phase's training state every so
# many steps (ours).
SAVE_EVERY = 250


def train_phase(model, rows, settings, log=None, state: Path | None = None) -> None:
    """Train ``model`` in place on ``rows()`` (a callable returning ``(ids, pos, pad)``, so
    that a phase already finished builds no rows) with ``settings``. With ``state`` (a folder
    of the phase's own) the phase is resumable: its training state is saved every
    ``SAVE_EVERY`` steps and resumed from after a kill, and once it has finished its weights
    stay there and are loaded instead of training it again."""
    from accelerate import Accelerator
    from safetensors.torch import load_model, save_model

    from harness.training.loop import RowSource, train_loop

    if state is not None and (state / "done").exists():
        load_model(model, str(state / "model.safetensors"))
        _log(f"{state.name}: finished in an earlier run; its weights loaded")
        return
    ids, pos, pad = rows()
    if state is not None:
        settings = dataclasses.replace(settings, save_every=SAVE_EVERY)
    train_loop(model, RowSource(ids, pos, pad), settings, Accelerator(cpu=True), log=log,
               state_dir=None if state is None else state / "loop")
    if state is not None:
        state.mkdir(parents=True, exist_ok=True)
        save_model(model, str(state / "model.safetensors"))   # handles tied embeddings
        (state / "done").write_text("")
        shutil.rmtree(state / "loop", ignore_errors=True)


# ---------------------------------------------------------------- phase 3: benchmark formats

# RULER's niah tasks and the lengths (RULER's budget: prompt + 128 tokens to generate) at which
# their prompts fit the base context with the sandbox tokenizer
FORMAT_RULER = {"niah_single_1": (448, 512, 576, 640), "niah_single_2": (384, 448, 512, 576, 640),
                "niah_single_3": (384, 448, 512, 576, 640), "niah_multikey_1": (512, 576, 640),
                "niah_multikey_2": (448, 512, 576, 640), "niah_multivalue": (512, 576, 640),
                "niah_multiquery": (576, 640)}
FORMAT_MC_RESERVES = (12, 60, 110, 160, 260)       # LongBench-v2's prompt: 512 - reserve
FORMAT_MC_CONTEXT_CHARS = 3000                     # longer than any prompt: always truncated
FORMAT_COT_TOKENS = 32     # the CoT pass's cap (``cot_tokens``): the fact is about 10 tokens
FORMAT_DRILL_STREAM = 500  # the drills' entities: their own stream beside the items'
FORMAT_DRILL_CONTEXT_CHARS = 200   # the drills' items need no document (it is left out)
DRILL_MODES = ("rows", "steps")   # PretrainRecipe.format_drill_mode
DRILL_CONTEXT = 1 << 20   # the drills' prompts are made whole (no truncation), then cut


def format_entities(s: SandboxSpec, n: int, seed: int) -> list[dict]:
    """``n`` entities (with look-alikes and profiles, as in ``probe.jsonl``) from their own
    stream, none of them an entity of the seed's default world (corpus or probe); in another
    world a name may coincide by chance, never its drawn values on purpose."""
    import random

    ws = world_spec(SandboxSpec(seed=s.seed))
    docs, probe = W.generate_corpus(ws)
    used = {d["entity"] for d in docs if d["entity"]} | {p["entity"] for p in probe} | {
        p["lookalike"]["name"] for p in probe}
    world, rng = W.World(ws), random.Random(f"format-{s.seed}-{seed}")
    return [W.entity_record(world, rng, used, f"format-{i:06d}") for i in range(n)]


def _benchmark(name: str, **entry):
    from harness.config import BenchmarkEntry
    from harness.registry import resolve

    return resolve("benchmark", name)(BenchmarkEntry(name=name, **entry))


def ruler_examples(tokenizer, n: int, seed: int, haystack: Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of RULER's niah tasks, built by the registered ``ruler``
    benchmark itself (its templates, needles and sizing) with the sandbox's filler as the
    essay haystack and seeds of their own (the evaluation's is 42)."""
    import random

    rng, out, chunk = random.Random(seed), [], 0
    tasks = sorted(FORMAT_RULER)
    while len(out) < n:
        chunk += 1
        task = rng.choice(tasks)
        bench = _benchmark("ruler", tasks=[task],
                           params={"essay_path": str(haystack), "seed": seed * 1000 + chunk})
        try:
            got = bench.samples(task, rng.choice(FORMAT_RULER[task]), tokenizer, 16)
        except Exception as exc:  # noqa: BLE001 - the benchmark's NotRun (a layer above)
            if "too short" not in str(exc):   # another tokenizer: draw another length
                raise
            continue
        out += [(x.prompt, " " + ", ".join(x.references) + ".") for x in got]
    return out[:n]


def _mc_samples(s: SandboxSpec, tokenizer, n_entities: int, seed: int, tmp: Path,
                context: int, prefix: str, chars: int = FORMAT_MC_CONTEXT_CHARS,
                entity_seed: int | None = None, **params):
    """Multiple-choice items (``world.mc_items``, documents of ``chars`` characters) about
    ``n_entities`` entities that are not the probe's (drawn with ``entity_seed``, default
    ``seed``), in blocks of 100, each block's prompts made by the registered
    ``longbench_v2`` benchmark (``params`` besides a reserve drawn per block): yields
    ``(bench, sample, fact, value)`` for each item whose evidence (the planted fact) the
    middle truncation kept."""
    import random

    rng = random.Random(seed)
    entities = format_entities(s, n_entities, seed if entity_seed is None else entity_seed)
    for group in range(0, len(entities), 100):
        block = entities[group:group + 100]
        path = tmp / f"{prefix}-{group // 100 + 1}.json"
        path.write_text(json.dumps(W.mc_items(block, seed, chars, prefix=prefix)))
        bench = _benchmark("longbench_v2", params={
            "path": str(path), "reserve": rng.choice(FORMAT_MC_RESERVES), "samples": "all",
            **params})
        for e, x in zip(block, bench.samples("overall", context, tokenizer, 0)):
            attr, value = W.mc_question(e, seed)
            said = W.fact(attr, e["first"], e["last"], value)
            if said in x.prompt:
                yield bench, x, said, value


MC_ANSWERS = ("letter", "value", "fact")
MC_PROMPTS = ("completion", "open", "open-spaced")   # PretrainRecipe.format_mc_prompt


def mc_bench_prompt(prompt: str) -> str:
    """The ``longbench_v2`` ``params.prompt`` of a ``format_mc_prompt``: ``open-spaced`` is the
    open prompt, its responses starting with a space."""
    return "open" if prompt == "open-spaced" else prompt


def mc_response_space(bench, prompt: str) -> str:
    """What stands between a prompt and its response's first word: a space after the
    completion form's answer prefix; after the open prompt's blank line nothing (``open``) or a
    space (``open-spaced``), so that the word is the one token it is in the document and the
    choices (the sandbox tokenizer's words carry their leading space; without it a value splits
    into pieces that occur nowhere in the context)."""
    return " " if bench.answer_prefix or prompt == "open-spaced" else ""


def _check_mc_prompt(prompt: str) -> None:
    if prompt not in MC_PROMPTS:
        raise ValueError(f"recipe: format_mc_prompt must be one of {MC_PROMPTS}, got {prompt!r}")


def mc_examples(s: SandboxSpec, tokenizer, n: int, seed: int, tmp: Path, context: int,
                answer: str = "letter", prompt: str = "completion") -> list[tuple[str, str]]:
    """(prompt, answer) pairs of multiple-choice items (``world.mc_items``) about entities
    that are not the probe's, in the registered ``longbench_v2`` benchmark's own prompt
    (completion form, middle truncation to ``context - reserve`` tokens); items whose
    evidence the truncation cut are left out. ``answer`` (``PretrainRecipe.format_mc_answer``):
    the letter alone, or the value (or the whole fact) and then the official answer line.
    ``prompt`` (``PretrainRecipe.format_mc_prompt``) ``open``: the prompt without the answer
    prefix, the response then the whole answer line (``The correct answer is (B).``, or
    ``<value>. The correct answer is (B).``)."""
    if answer not in MC_ANSWERS:
        raise ValueError(f"recipe: format_mc_answer must be one of {MC_ANSWERS}, got {answer!r}")
    _check_mc_prompt(prompt)
    out = []
    for bench, x, said, value in _mc_samples(s, tokenizer, 2 * n, seed, tmp, context, "format-mc",
                                             prompt=mc_bench_prompt(prompt)):
        if len(out) == n:
            break
        letter = x.references[0]
        space = mc_response_space(bench, prompt)
        reply = f" ({letter})" if bench.answer_prefix else f"{space}{bench.answer_line} ({letter})."
        if answer != "letter":   # the statement, then the official answer line
            stated = value if answer == "value" else said.removesuffix(".")
            reply = f"{space}{stated}. {bench.answer_line} ({letter})."
        out.append((x.prompt, reply))
    return out


def mc_drills(s: SandboxSpec, tokenizer, n: int, seed: int, tmp: Path, stated: str = "fact",
              prompt: str = "completion") -> list[tuple[str, str]]:
    """``n`` in-place letter drills (``PretrainRecipe.format_drill_share``): for items about
    entities that are not the probe's (``world.mc_items``, their own stream), the tail of the
    registered ``longbench_v2`` benchmark's one-pass prompt from the question on (``What is
    the correct answer to this question: ...``, the choices, the format line, the answer
    prefix; the document is left out), then the planted fact as the ``fact`` form's response
    states it and the answer line up to ``(``. The answer is the letter and ``).``: the second
    hop with the first hop's output given, at the place of the one-pass response. ``stated``
    ``value``: the value alone instead of the fact, as the ``value`` form's response states it
    (``PretrainRecipe.format_mc_answer``). ``prompt`` ``open``: the prompt's tail without the
    answer prefix, the statement starting the response (``PretrainRecipe.format_mc_prompt``)."""
    if stated not in ("fact", "value"):
        raise ValueError(f"mc_drills: stated must be fact or value, got {stated!r}")
    _check_mc_prompt(prompt)
    out = []
    n_entities = -(-n // 100) * 100   # whole blocks: mc_items draws distractors within one
    for bench, x, said, value in _mc_samples(s, tokenizer, n_entities, seed, tmp, DRILL_CONTEXT,
                                         "format-drill", chars=FORMAT_DRILL_CONTEXT_CHARS,
                                         entity_seed=seed + FORMAT_DRILL_STREAM,
                                         prompt=mc_bench_prompt(prompt)):
        if len(out) == n:
            break
        at = x.prompt.rindex(x.meta["item"]["question"])
        tail = x.prompt[x.prompt.rfind("\n", 0, at) + 1:]
        told = value if stated == "value" else said.removesuffix(".")
        space = mc_response_space(bench, prompt)
        out.append((f"{tail}{space}{told}. {bench.answer_line} (", f"{x.references[0]})."))
    return out


def cot_examples(s: SandboxSpec, tokenizer, n: int, seed: int, tmp: Path, context: int,
                 passes: str = "both") -> list[tuple[str, str]]:
    """``n`` (prompt, answer) pairs of LongBench-v2's two-pass CoT on multiple-choice items
    (``world.mc_items``) about entities that are not the probe's, made by the registered
    ``longbench_v2`` benchmark itself (``cot: true``, completion form): for each item, the CoT
    pass's prompt with the planted fact as its answer (`` <First> <Last> keeps the <attr>
    <value>.``), and the answer pass's prompt (``followup``, that fact as the CoT) with the
    letter. Items whose evidence the truncation cut are left out. ``passes``: ``answer`` or
    ``cot`` keeps that pass's examples only."""
    if passes not in ("both", "answer", "cot"):
        raise ValueError(f"recipe: cot_passes must be both, answer or cot, got {passes!r}")
    out = []
    for bench, x, said, _ in _mc_samples(s, tokenizer, n if passes == "both" else 2 * n, seed,
                                      tmp, context, "format-cot", cot=True,
                                      cot_tokens=FORMAT_COT_TOKENS):
        if len(out) >= n:
            break
        (answer_pass,) = bench.followup("overall", [x], [" " + said], tokenizer)
        if passes in ("both", "cot"):
            out.append((x.prompt, " " + said))
        if passes in ("both", "answer"):
            out.append((answer_pass.prompt, f" ({x.references[0]})"))
    return out[:n]


def format_rows(s: SandboxSpec, tokenizer, recipe: PretrainRecipe | None = None,
                phase: int = 3):
    """Phase 3's rows (``phase=4``: phase 4's), in training order: ``(ids, pos, pad)``.
    Format examples (prompt, answer, EOS) are packed whole into rows of ``recipe.context``
    tokens; only the answer and EOS carry loss (``pad`` marks the rest). Every
    ``format_retain_every``-th batch is rows of phase 2's mix from their own streams, with the
    loss on every token. Phase 3's multiple-choice examples are one-pass (``mc_examples``),
    phase 4's are the two CoT passes (``cot_examples``); ``format_drill_share`` of phase 3's
    format rows are rows of letter drills (``mc_drills``), in seeded order among the rest
    (``format_drill_mode="steps"``: whole batches of them, the loss on the letters alone)."""
    import random
    import tempfile

    import numpy as np

    recipe = recipe or RECIPE
    if phase not in (3, 4):
        raise ValueError(f"format_rows: phase must be 3 or 4, got {phase}")
    steps, share, offset = ((recipe.format_steps, recipe.format_mc_share,
                             recipe.format_seed_offset) if phase == 3 else
                            (recipe.cot_steps, recipe.cot_mc_share, recipe.cot_seed_offset))
    T, B, every = recipe.context, recipe.micro_batch, recipe.format_retain_every
    retain = [k for k in range(steps) if every and k % every == every - 1]
    n_rows = (steps - len(retain)) * B
    seed = offset + s.seed
    _check_mc_prompt(recipe.format_mc_prompt)
    if not 0 <= recipe.format_drill_share < 1:
        raise ValueError(f"recipe: format_drill_share must be in [0, 1), got "
                         f"{recipe.format_drill_share!r}")
    if recipe.format_drill_mode not in DRILL_MODES:
        raise ValueError(f"recipe: format_drill_mode must be one of {DRILL_MODES}, got "
                         f"{recipe.format_drill_mode!r}")
    by_step = recipe.format_drill_mode == "steps"
    n_drill = int(round(n_rows * recipe.format_drill_share)) if phase == 3 else 0
    if by_step:   # whole batches
        n_drill = B * int(round(n_drill / B))
    n_mc = int(round((n_rows - n_drill) * share))
    with tempfile.TemporaryDirectory(prefix="format_") as tmp:
        hay = Path(tmp) / "haystack.json"
        hay.write_text(json.dumps(W.haystack(seed)))
        if phase == 3:
            mc = mc_examples(s, tokenizer, n_mc, seed, Path(tmp), T, recipe.format_mc_answer,
                             recipe.format_mc_prompt)
        else:
            mc = cot_examples(s, tokenizer, n_mc, seed, Path(tmp), T, recipe.cot_passes)
        examples = ruler_examples(tokenizer, n_rows - n_drill - n_mc, seed, hay) + mc
        # the drills state what the one-pass response states before its answer line
        stated = "value" if recipe.format_mc_answer == "value" else "fact"
        drills = mc_drills(s, tokenizer, 4 * n_drill, seed, Path(tmp), stated,
                           recipe.format_mc_prompt) if n_drill else []
    random.Random(seed).shuffle(examples)
    ids, pos, pad = _pack(examples, tokenizer, n_rows - n_drill, T)
    if n_drill:   # rows of drills (about 3 fit a row), spread among the others
        random.Random(seed).shuffle(drills)   # mc_items rotates the true letter
        drills = _pack(drills, tokenizer, n_drill, T, answer_loss=1 if by_step else None)
        order = np.random.default_rng(seed).permutation(n_rows)
        if by_step:   # batches, not rows, are shuffled: a drill batch stays whole
            order = (np.random.default_rng(seed).permutation(n_rows // B)[:, None] * B
                     + np.arange(B)).ravel()
        ids, pos, pad = (np.concatenate([x, d])[order] for x, d in zip((ids, pos, pad), drills))
    ids, pos, pad = _with_retention(s, tokenizer, recipe, retain, ids, pos, pad, steps, offset)
    return ids, pos, pad


def _pack(examples: list[tuple[str, str]], tokenizer, n_rows: int, T: int,
          answer_loss: int | None = None):
    """``(ids, pos, pad)`` of ``n_rows`` rows of ``T`` tokens with ``examples`` (prompt,
    answer) packed whole from the end of the list, each with its own positions, the loss on the
    answer and an EOS (``answer_loss``: on the answer's first so many tokens only); too few
    examples: the rows that have them, cycled."""
    import numpy as np

    ids, pos, pad = (np.full((n_rows, T), tokenizer.eos_token_id, dtype=np.int64),
                     np.zeros((n_rows, T), dtype=np.int64), np.ones((n_rows, T), dtype=bool))
    row, fill, left = 0, 0, list(examples)
    while left and row < n_rows:
        prompt, answer = left.pop()
        p = tokenizer(prompt)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(p) + len(a) > T:
            continue
        if fill + len(p) + len(a) > T:
            row, fill = row + 1, 0
            if row == n_rows:
                break
        n = len(p) + len(a)
        ids[row, fill:fill + n] = p + a
        pos[row, fill:fill + n] = np.arange(n)
        end = n if answer_loss is None else len(p) + answer_loss
        pad[row, fill + len(p) - 1:fill + end] = False   # the last prompt token predicts
        fill += n
    rows = row + (fill > 0)
    if rows < n_rows:
        ids, pos, pad = (np.resize(x[:rows], x.shape) for x in (ids, pos, pad))
    return ids, pos, pad


def _with_retention(s, tokenizer, recipe, retain, ids, pos, pad, steps, offset):
    """The format rows with a batch of phase 2's mix at each step in ``retain``."""
    if not retain:
        return ids, pos, pad
    kept = mixed_rows(s, tokenizer, dataclasses.replace(
        recipe, steps=len(retain), drill_warmup_steps=0, curriculum_fraction=1e-6),
        stream_offset=offset)
    return _interleave((ids, pos, pad), kept, retain, steps, recipe.micro_batch)


def _interleave(rows, other, at: list[int], steps: int, B: int):
    """``steps`` batches of ``B`` rows: ``other``'s batches at the steps in ``at`` (sorted),
    ``rows``' batches in order at the rest."""
    import numpy as np

    out = [np.empty((steps * B,) + x.shape[1:], dtype=x.dtype) for x in rows]
    f = r = 0
    for k in range(steps):
        dst = slice(k * B, (k + 1) * B)
        if r < len(at) and at[r] == k:
            src, r = slice(r * B, (r + 1) * B), r + 1
            for o, x in zip(out, other):
                o[dst] = x[src]
        else:
            src, f = slice(f * B, (f + 1) * B), f + 1
            for o, x in zip(out, rows):
                o[dst] = x[src]
    return tuple(out)


def format_pretraining(s: SandboxSpec, model, tokenizer, recipe: PretrainRecipe | None = None,
                       log=None, phase: int = 3, state: Path | None = None) -> None:
    """Phase 3 of the recipe (``phase=4``: phase 4), in place on ``model`` (the previous
    phase's weights), when ``recipe.format_steps`` (``cot_steps``) is set: a fresh optimizer
    and schedule on ``format_rows``; ``state``: see ``train_phase``."""
    from harness.training.loop import LoopSettings

    recipe = recipe or RECIPE
    steps, lr, warmup = ((recipe.format_steps, recipe.format_lr, recipe.format_warmup_steps)
                         if phase == 3 else
                         (recipe.cot_steps, recipe.cot_lr, recipe.cot_warmup_steps))

    def rows():
        t0 = time.perf_counter()
        ids, pos, pad = format_rows(s, tokenizer, recipe, phase)
        what = "benchmark formats" if phase == 3 else "multiple choice with LongBench-v2's CoT"
        _log(f"phase {phase} ({what}): {steps} steps, {int((~pad).sum()):,} loss-carrying "
             f"tokens; rows built in {time.perf_counter() - t0:.0f} s")
        return ids, pos, pad

    settings = LoopSettings(steps=steps, micro_batch=recipe.micro_batch, grad_accum=1, lr=lr,
                            warmup_steps=warmup, min_lr_ratio=recipe.min_lr_ratio,
                            log_every=25, seed=s.seed + phase - 1)
    train_phase(model, rows, settings, log, state)


# The in-place letter drills a ``{"drill": FORM}`` stage trains (``drill_forms``): ``in-place``,
# the ``fact`` form's drill of phase 3 (``mc_drills``); ``in-place-value-after-format``, the
# value alone after the prompt's format line (no answer prefix, no restated name); and
# ``in-place-open-spaced``, the ``open-spaced`` prompt's drill (a space before the value).
DRILL_STAGE_FORMS = ("in-place", "in-place-value-after-format", "in-place-open-spaced")
DRILL_STAGE_SEED = 3000    # the stages' training drills (the trials' first format_seed_offset)
DRILL_STAGE_COPY_SEED = 7000   # the slice copying beside a stage's drills (its own stream)
DRILL_STAGE_LR = 1e-3
DRILL_STAGE_WARMUP = 20
# phase 2's fields that shape the retained batches of phase 3's mix (``_with_retention``)
STAGE_MIX_FIELDS = ("copy_share", "copy_digit_share")
FORMAT_LINE = "Format your response as follows:"   # LongBench-v2's, up to its end of line


def without_format_line(prompt: str) -> str:
    """``prompt`` less LongBench-v2's format line and the blank line after it."""
    at = prompt.index(FORMAT_LINE)
    return prompt[:at] + prompt[prompt.index("\n", at) + 1:].removeprefix("\n")


def value_only(prompt: str) -> str:
    """``prompt`` with its last paragraph (the prompt's answer prefix and the restated fact)
    cut to the value: ``The correct answer is ... keeps the <attribute> <value>. The correct
    answer is (`` becomes ``<value>. The correct answer is (``."""
    head, sep, fact = prompt.rpartition("\n\n")
    cut = fact.rindex(". ")
    return f"{head}{sep}{fact[:cut].rsplit(' ', 1)[1]}{fact[cut:]}"


def drill_forms(s: SandboxSpec, tokenizer, n: int, seed: int, tmp: Path,
                form: str = "in-place") -> list[tuple[str, str]]:
    """``n`` in-place letter drills (``mc_drills``) of ``form``: ``in-place``, the ``fact``
    form's; ``in-place-no-format``, that without LongBench-v2's format line;
    ``in-place-value-only``, also without the restated name and attribute (and the prompt's
    answer prefix); ``in-place-value-prefixed``, that with the prefix back;
    ``in-place-value-after-format``, the value alone after the format line;
    ``in-place-open-spaced``, the ``open-spaced`` prompt's drill."""
    forms = DRILL_STAGE_FORMS + ("in-place-no-format", "in-place-value-only",
                                 "in-place-value-prefixed")
    if form not in forms:
        raise ValueError(f"drill form must be one of {forms}, got {form!r}")
    if form == "in-place-open-spaced":
        return mc_drills(s, tokenizer, n, seed, tmp, "value", "open-spaced")
    drills = mc_drills(s, tokenizer, n, seed, tmp,
                       "value" if form == "in-place-value-prefixed" else "fact")
    if form in ("in-place-no-format", "in-place-value-only", "in-place-value-prefixed"):
        drills = [(without_format_line(p), a) for p, a in drills]
    if form in ("in-place-value-only", "in-place-value-after-format"):
        drills = [(value_only(p), a) for p, a in drills]
    return drills


def drill_stage_rows(s: SandboxSpec, tokenizer, n_rows: int, context: int, tmp: Path,
                     form: str = "in-place"):
    """``(ids, pos, pad)``: ``n_rows`` rows of in-place drills of ``form`` (seed
    ``DRILL_STAGE_SEED``), packed whole (about 3 a row), the loss on the letter alone."""
    import random

    drills = drill_forms(s, tokenizer, 4 * n_rows, DRILL_STAGE_SEED, tmp, form)
    random.Random(DRILL_STAGE_SEED).shuffle(drills)   # mc_items rotates the true letter
    return _pack(drills, tokenizer, n_rows, context, answer_loss=1)


def _check_copy_every(copy_every, where: str) -> None:
    if type(copy_every) is not int or copy_every < 0 or copy_every == 1:
        raise ValueError(f"{where}: copy_every must be 0 (none) or an integer of 2 or more, "
                         f"got {copy_every!r}")


def drill_stage_data(s: SandboxSpec, tokenizer, form: str, steps: int, tmp: Path,
                     recipe: PretrainRecipe | None = None, copy_every: int = 0):
    """A drill stage's rows for ``steps`` steps, in training order: ``drill_stage_rows``, and
    with ``copy_every`` (0 = none) a batch of slice copying (``copy_rows``, the stream
    ``DRILL_STAGE_COPY_SEED``) at every ``copy_every``-th step instead, so that the copying
    phase 1 taught is trained beside the drills."""
    recipe = recipe or RECIPE
    B = recipe.micro_batch
    _check_copy_every(copy_every, "drill stage")
    at = [k for k in range(steps) if copy_every and k % copy_every == copy_every - 1]
    drills = drill_stage_rows(s, tokenizer, (steps - len(at)) * B, recipe.context, tmp, form)
    if not at:
        return drills
    copies = copy_rows(s, tokenizer, len(at) * B, recipe, seed=DRILL_STAGE_COPY_SEED)
    return _interleave(drills, copies, at, steps, B)


def recipe_with(recipe: PretrainRecipe, changes: dict, where: str,
                any_field: bool = False) -> PretrainRecipe:
    """``recipe`` with the ``format_*``, ``cot_*`` or ``STAGE_MIX_FIELDS`` fields of
    ``changes`` (with ``any_field``, any field but ``version`` and ``stages``), each value of
    its field's type (an int for a float field is taken, and a string that reads as a number:
    YAML 1.1 leaves ``3e-4`` a string; a list for a tuple field); ValueError names ``where``
    and the field that is not one of them or not of its type."""
    fields = {f.name for f in dataclasses.fields(PretrainRecipe)
              if f.name.startswith(("format_", "cot_")) or f.name in STAGE_MIX_FIELDS
              or any_field and f.name not in ("version", "stages")}
    what = "a field that may be changed" if any_field else "a field a stage may change"
    out = {}
    for key, value in changes.items():
        if key not in fields:
            raise ValueError(f"{where}: {key!r} is not {what} (one of {sorted(fields)})")
        default = getattr(PretrainRecipe, key)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
            if len(value) != len(default) or any(type(v) is not type(d) and not (
                    isinstance(d, float) and type(v) is int) for v, d in zip(value, default)):
                raise ValueError(f"{where}: {key} takes {len(default)} values like "
                                 f"{default!r}, got {list(value)!r}")
            value = tuple(float(v) if isinstance(d, float) else v
                          for v, d in zip(value, default))
        if isinstance(default, float) and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        if type(value) is not type(default):
            raise ValueError(f"{where}: {key} takes a {type(default).__name__} (its default is "
                             f"{default!r}), got {value!r}")
        out[key] = value
    return dataclasses.replace(recipe, **out)


def set_items(items: list[str], any_field: bool = False, refuse: dict | None = None) -> dict:
    """The fields of version 4's recipe that command-line ``--set FIELD=VALUE`` items change,
    each value read as YAML and made its field's type by ``recipe_with`` (with ``any_field``
    as there); ValueError names the item that is not FIELD=VALUE, names a field of
    ``refuse`` (a field: why mapping), or is not a field that may be changed or not of its
    type."""
    import yaml

    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        if key in (refuse or {}):
            raise ValueError(f"--set {item!r}: {refuse[key]}")
        changed = recipe_with(RECIPE, {key: yaml.safe_load(value)}, f"--set {item!r}",
                              any_field=any_field)
        changes[key] = getattr(changed, key)
    return changes


def check_shape(recipe: PretrainRecipe) -> None:
    """ValueError naming the model-shape field of ``recipe`` that no model can have."""
    for key in ("layers", "hidden", "heads", "kv_heads", "intermediate", "context",
                "micro_batch", "steps"):
        if getattr(recipe, key) < 1:
            raise ValueError(f"recipe: {key} must be at least 1, got {getattr(recipe, key)}")
    if recipe.hidden % recipe.heads or (recipe.hidden // recipe.heads) % 2:
        raise ValueError(f"recipe: hidden ({recipe.hidden}) must split into heads "
                         f"({recipe.heads}) of an even width (RoPE rotates pairs)")
    if recipe.heads % recipe.kv_heads:
        raise ValueError(f"recipe: heads ({recipe.heads}) must be a multiple of kv_heads "
                         f"({recipe.kv_heads})")


def check_stages(recipe: PretrainRecipe) -> None:
    """ValueError naming the first stage of ``recipe.stages`` that is not well formed."""
    for k, stage in enumerate(recipe.stages):
        where = f"recipe: stages[{k}]"
        if not isinstance(stage, dict) or "steps" not in stage or not (
                set(stage) <= {"drill", "steps", "copy_every"} and "drill" in stage
                or set(stage) == {"mix", "steps"}):
            raise ValueError(f"{where}: expected {{'drill': FORM, 'steps': N[, 'copy_every': "
                             f"K]}} or {{'mix': {{FIELD: VALUE}}, 'steps': N}}, got {stage!r}")
        if type(stage["steps"]) is not int or stage["steps"] < 1:
            raise ValueError(f"{where}: steps must be a positive integer, got "
                             f"{stage['steps']!r}")
        if "drill" in stage and stage["drill"] not in DRILL_STAGE_FORMS:
            raise ValueError(f"{where}: drill must be one of {DRILL_STAGE_FORMS}, got "
                             f"{stage['drill']!r}")
        _check_copy_every(stage.get("copy_every", 0), where)
        if "mix" in stage:
            if not isinstance(stage["mix"], dict):
                raise ValueError(f"{where}: mix must be a mapping of fields, got "
                                 f"{stage['mix']!r}")
            if "format_steps" in stage["mix"]:
                raise ValueError(f"{where}: a mix stage's length is its steps, not "
                                 f"format_steps")
            recipe_with(recipe, stage["mix"], where)


def drill_stage(s: SandboxSpec, model, tokenizer, form: str, steps: int,
                recipe: PretrainRecipe | None = None, log=None, copy_every: int = 0,
                state: Path | None = None) -> None:
    """A ``{"drill": form, "steps": steps, "copy_every": copy_every}`` stage, in place on
    ``model``: a fresh AdamW and cosine schedule (``DRILL_STAGE_WARMUP`` warm-up steps,
    learning rate ``DRILL_STAGE_LR``, to ``min_lr_ratio``) on ``drill_stage_data`` (what
    ``scripts/sandbox_letter_drill.py --form FORM --copy-every K`` trains); ``state``: see
    ``train_phase``."""
    import tempfile

    from harness.training.loop import LoopSettings

    recipe = recipe or RECIPE

    def rows():
        with tempfile.TemporaryDirectory(prefix="drill_") as tmp:
            ids, pos, pad = drill_stage_data(s, tokenizer, form, steps, Path(tmp), recipe,
                                             copy_every)
        _log(f"drill stage ({form}): {steps} steps, {int((~pad).sum()):,} loss-carrying "
             f"tokens")
        return ids, pos, pad

    settings = LoopSettings(steps=steps, micro_batch=recipe.micro_batch, grad_accum=1,
                            lr=DRILL_STAGE_LR, warmup_steps=DRILL_STAGE_WARMUP,
                            min_lr_ratio=recipe.min_lr_ratio, log_every=25, seed=s.seed)
    train_phase(model, rows, settings, log, state)


def run_stages(s: SandboxSpec, model, tokenizer, recipe: PretrainRecipe | None = None,
               log=None, state_dir: Path | None = None) -> None:
    """``recipe.stages`` in order, in place on ``model``; with ``state_dir``, each stage
    resumable in ``stage-K`` under it (``train_phase``)."""
    recipe = recipe or RECIPE
    check_stages(recipe)
    for k, stage in enumerate(recipe.stages):
        state = None if state_dir is None else state_dir / f"stage-{k}"
        if "drill" in stage:
            drill_stage(s, model, tokenizer, stage["drill"], stage["steps"], recipe, log,
                        stage.get("copy_every", 0), state=state)
        else:
            staged = recipe_with(recipe, {**stage["mix"], "format_steps": stage["steps"]},
                                 f"recipe: stages[{k}]")
            format_pretraining(s, model, tokenizer, staged, log=log, state=state)


def pretrain(s: SandboxSpec, out_dir: Path, recipe: PretrainRecipe | None = None,
             log=None, check_every: int = 0, state_dir: Path | None = None) -> Path:
    """Train the tokenizer and the tiny Qwen2 base model; save an HF folder at ``out_dir``.

    ``check_every`` (a multiple of 50) runs the induction check (``properties.copying``) every
    so many steps of each phase and logs it: the phase change where copying forms is visible as
    the second copy's NLL falling away from the first's.

    ``state_dir``: a folder where the build keeps its progress (the tokenizer, each phase's
    training state every ``SAVE_EVERY`` steps, each finished phase's weights), so that the
    same call after a kill goes on where it stopped and ends with the same weights; removed
    once the model is saved. A folder left by another recipe or world is refused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.training.loop import LoopSettings
    from harness.training.model_io import save_checkpoint, tiny_qwen2_config

    recipe = recipe or RECIPE
    check_shape(recipe)    # before hours of work
    check_stages(recipe)
    state = None if state_dir is None else Path(state_dir)
    if state is not None:
        _claim_state(state, s, recipe)
    tok_dir = out_dir.with_name(out_dir.name + ".tokenizer") if state is None else \
        state / "tokenizer"
    if state is None or not tok_dir.is_dir():
        with atomic_dir(tok_dir) as tmp:
            train_sandbox_tokenizer(s, tmp, recipe)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    cfg = tiny_qwen2_config(len(tok), recipe.hidden, recipe.layers, recipe.heads,
                            recipe.kv_heads, recipe.intermediate, recipe.context,
                            recipe.rope_theta, tok.eos_token_id)
    cfg.initializer_range = recipe.init_std
    torch.manual_seed(s.seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    log = _with_copy_check(model, tok, s, log, check_every)

    def rows():
        ids, pos, pad = mixed_rows(s, tok, recipe, copy_warmup=recipe.copy_warmup_steps)
        _log(f"pre-training on {ids.size:,} tokens ({recipe.steps} steps of "
             f"{recipe.micro_batch}x{recipe.context}, the first {recipe.copy_warmup_steps} of "
             f"them slice copying)")
        return ids, pos, pad

    def at(name):
        return None if state is None else state / name

    settings = LoopSettings(steps=recipe.steps, micro_batch=recipe.micro_batch, grad_accum=1,
                            lr=recipe.lr, warmup_steps=recipe.warmup_steps,
                            min_lr_ratio=recipe.min_lr_ratio, log_every=50, seed=s.seed)
    train_phase(model, rows, settings, log, at("phase-1"))
    if recipe.continue_steps:
        continue_pretraining(s, model, tok, recipe, log=log, state=at("phase-2"))
    if recipe.format_steps:
        format_pretraining(s, model, tok, recipe, log=log, state=at("phase-3"))
    if recipe.cot_steps:
        format_pretraining(s, model, tok, recipe, log=log, phase=4, state=at("phase-4"))
    run_stages(s, model, tok, recipe, log=log, state_dir=state)
    save_checkpoint(model, tok, out_dir)
    shutil.rmtree(tok_dir if state is None else state, ignore_errors=True)
    return out_dir


def _claim_state(state: Path, s: SandboxSpec, recipe: PretrainRecipe) -> None:
    """Mark ``state`` as this build's, or refuse it when another build's progress is there."""
    key = stable_hash({"model": model_key(s, recipe), "world": s.model_dump(mode="json"),
                       "recipe": dataclasses.asdict(recipe)})
    mark = state / "build.json"
    if mark.exists():
        found = json.loads(mark.read_text()).get("key")
        if found != key:
            raise ValueError(f"{state} holds the progress of another build (key {found}, this "
                             f"one {key}): remove it to start this one")
        _log(f"resuming the build kept in {state}")
        return
    state.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({"key": key, "world_seed": s.seed}))


def _with_copy_check(model, tok, s: SandboxSpec, log, every: int):
    """``log`` that also runs and logs the induction check every ``every`` steps."""
    if not every:
        return log
    if every % 50:
        raise ValueError(f"check_every must be a multiple of 50 (the loop logs every 50 steps), "
                         f"got {every}")
    from harness.sandbox.properties import copying

    words = W.World(world_spec(s)).lexicon()

    def both(metrics: dict, step: int) -> None:
        if log is not None:
            log(metrics, step)
        if step % every == 0:
            model.eval()
            c = copying(model, tok, words, n=8, seed=7)
            model.train()
            _log(f"step {step}: loss {metrics['train/loss']:.3f}; copying (1st / 2nd copy NLL) "
                 f"words {c['words']['first']:.2f} / {c['words']['second']:.2f}, digits "
                 f"{c['digits']['first']:.2f} / {c['digits']['second']:.2f}")
    return both


def measure_properties(model_dir: Path, probe: list[dict], alpha: float = 2.0,
                       epsilon: float = 0.4) -> dict:
    from transformers import AutoTokenizer

    from harness.sandbox.properties import build_cases, measure
    from harness.training.model_io import load_model

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = load_model(model_dir)
    return measure(model, build_cases(tok, probe), tok.eos_token_id, alpha, epsilon)


def build_sandbox(s: SandboxSpec | None = None, from_scratch: bool = False,
                  out_root: str | Path | None = None, check_every: int = 0) -> Path:
    """Build the sandbox for ``s`` (or find it built) and return its folder."""
    from harness.layout import sandbox_dir

    s = s or SandboxSpec()
    out = sandbox_dir(s, out_root)
    manifest = out / "manifest.json"
    shipped_ok = ASSET.is_dir() and json.loads(
        (ASSET / "recipe.json").read_text()).get("model_key") == model_key(s)
    if manifest.exists() and not from_scratch:
        m = json.loads(manifest.read_text())
        if m.get("model_key") == model_key(s):
            return out
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        docs, probe = W.generate_corpus(world_spec(s))
        W.write_jsonl(tmp / "corpus.jsonl", docs)
        W.write_jsonl(tmp / "probe.jsonl", probe)
        if from_scratch or not shipped_ok:
            if not from_scratch:
                _log(f"no shipped base model for sandbox seed {s.seed}: pre-training from scratch "
                     f"(1-2 hours on 2 cores; a killed build resumes when run again)")
            pretrain(s, tmp / "model", check_every=check_every,
                     state_dir=out.with_name(out.name + ".state"))
            origin = "from-scratch"
        else:
            shutil.copytree(ASSET / "model", tmp / "model")
            origin = "shipped"
        props = measure_properties(tmp / "model", probe)
        (tmp / "properties.json").write_text(json.dumps(props, indent=2))
        m = {"sandbox": s.model_dump(mode="json"), "model_key": model_key(s),
             "recipe": dataclasses.asdict(RECIPE if origin == "from-scratch" else
                                          PretrainRecipe(**json.loads(
                                              (ASSET / "recipe.json").read_text())["recipe"])),
             "model_origin": origin,
             "n_documents": len(docs), "n_probe_entities": len(probe),
             "sha256": {p.name: sha256_file(p) for p in
                        [tmp / "corpus.jsonl", tmp / "probe.jsonl", tmp / "model" / "model.safetensors"]},
             "build_seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "manifest.json").write_text(json.dumps(m, indent=2))
    _log(f"built in {m['build_seconds']} s ({origin} model); properties: "
         + ", ".join(f"{k}={v:.2f}" for k, v in props.items()
                     if k.startswith(("a_", "b_", "c_"))))
    return out


def export_asset(built: Path) -> None:
    """Copy a from-scratch model into the package asset (maintainers, after --from-scratch)."""
    m = json.loads((built / "manifest.json").read_text())
    with atomic_dir(ASSET) as tmp:
        shutil.copytree(built / "model", tmp / "model")
        (tmp / "recipe.json").write_text(json.dumps(
            {"model_key": m["model_key"], "seed": m["sandbox"]["seed"], "recipe": m["recipe"]},
            indent=2))
        shutil.copy(built / "properties.json", tmp / "properties.json")
