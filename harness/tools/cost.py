"""``policylong cost SPEC``: what a run of the spec will cost, per method, stage and phase.

Compute is counted in FLOPs from the model's shape and the spec's budgets; time is FLOPs divided
by a throughput: on this machine the throughput measured by a short calibration run, on a GPU its
peak times an assumed model-FLOPs utilisation (``MFU``, ours). The calibration times the real code
where it can: ``calibrate`` (the screening forward, a training step and the query encoder, on any
spec), and with the spec's index built ``calibrate_queries`` (seconds per retrieval query) and
``calibrate_pipeline`` (screening and verification FLOP/s through ``screen_and_verify`` on the
spec's own roots); with the spec's model here ``calibrate_training`` (``train_stage`` at two step
counts on rows shaped like the spec's: the step rate, and what a stage costs beyond its steps,
model loading, optimizer state and checkpoint writing, 0.0-0.3 s a sandbox stage here; not
counted on a GPU, where it is small against the steps).

Phases and their FLOPs (``Shape`` below; ``P`` = matmul parameters per token, ``L`` layers, ``A``
= heads × head size, ``V`` vocabulary, ``d`` hidden size):

- **screen**: one forward over each root's screening window (rows of ``n`` tokens:
  ``2·P·n + 2·L·A·n²``), the LM head at every position (``2·V·d`` each).
- **retrieve**: each anchor's query (±``query_window`` tokens) through the sentence encoder
  (``2·P_enc`` per word piece) and a flat search (``2·dim`` per stored chunk; IVF indexes
  search a small share of it, counted as 5 %, ours).
- **verify**: with the prefix cache, each distinct candidate chunk once as a prefix, then per
  candidate the root's ``D_cut`` continuing it (matmuls over ``D_cut``'s tokens, attention to
  the prefix and itself); without it, a full ``[C; D_cut]`` row per candidate. The LM head only
  at the anchors.
- **train**: forward and backward (3× the forward) over every row of the stage, head at every
  position; the whole row attends (an upper bound for group-masked rows).

Counts come from a built run when the spec has one (each stage dataset's manifest: roots,
anchors, candidates and their tokens, rows), else from the assumptions in ``Assumptions``
(accept rates per stage measured on the smoke spec, and a mean document length), printed with
the prediction. Everything here that the papers do not fix is ours.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Shapes of models the shipped specs name, from their config.json on the Hugging Face hub
# (the hub is not reachable at run time). A local model folder is read directly.
KNOWN_SHAPES: dict[str, dict[str, int]] = {
    # Qwen/Qwen2.5-3B config.json: 36 layers, hidden 2048, MLP 11008, 16 heads, 2 KV heads
    "Qwen/Qwen2.5-3B": dict(layers=36, hidden=2048, intermediate=11008, heads=16, kv_heads=2,
                            head_dim=128, vocab=151936),
    # meta-llama/Meta-Llama-3-8B config.json
    "meta-llama/Meta-Llama-3-8B": dict(layers=32, hidden=4096, intermediate=14336, heads=32,
                                       kv_heads=8, head_dim=128, vocab=128256),
}
# sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, MLP 1536
ENCODER_SHAPE = dict(layers=6, hidden=384, intermediate=1536, heads=12, kv_heads=12,
                     head_dim=32, vocab=30522)
ENCODER_DIM = 384

# Model-FLOPs utilisation assumed on a GPU (ours): long-context training with FSDP and
# gradient checkpointing typically reaches 35-45 % of bf16 peak; batched inference forwards of
# short rows less.
QUERY_PIECES_PER_TOKEN = 1.3    # encoder word pieces per model token of a query (ours)
MFU = {"screen": 0.30, "retrieve": 0.20, "verify": 0.30, "train": 0.40}
PHASES = ("screen", "retrieve", "verify", "train")
# Which measured throughput on this machine stands for which phase
TRAIN_CALIBRATION_MAX_LENGTH = 8192   # longer rows: a bare forward and backward at 2,048
CALIBRATION_FOR = {"screen": "forward", "verify": "forward", "retrieve": "encoder",
                   "train": "train"}


@dataclass
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool = True           # SwiGLU (Qwen, Llama): 3 matrices; BERT: 2

    @property
    def matmul_params(self) -> float:
        """Parameters a token passes through in the layers (embeddings and head excluded)."""
        attn = self.hidden * self.heads * self.head_dim * 2 \
            + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return float(self.layers * (attn + mlp))

    def attention(self, queries: float, keys_per_query: float) -> float:
        """QKᵀ and AV: ``4·L·A`` per (query, key) pair."""
        return 4.0 * self.layers * self.heads * self.head_dim * queries * keys_per_query

    def forward(self, rows: float, length: float, head_positions: float) -> float:
        """A causal forward over ``rows`` rows of ``length`` tokens, the LM head at
        ``head_positions`` positions in all."""
        return (rows * (2 * self.matmul_params * length + self.attention(length, length / 2))
                + 2.0 * self.vocab * self.hidden * head_positions)

    @classmethod
    def of(cls, model: str | Path) -> "Shape":
        path = Path(str(model)).expanduser()
        if (path / "config.json").is_file():
            c = json.loads((path / "config.json").read_text())
            heads = c["num_attention_heads"]
            return cls(layers=c["num_hidden_layers"], hidden=c["hidden_size"],
                       intermediate=c["intermediate_size"], heads=heads,
                       kv_heads=c.get("num_key_value_heads", heads),
                       head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                       vocab=c["vocab_size"])
        if str(model) in KNOWN_SHAPES:
            return cls(**KNOWN_SHAPES[str(model)])
        raise ValueError(f"cost: no config.json in '{model}' and no shape known for it (known: "
                         f"{', '.join(KNOWN_SHAPES)}); pass a local model folder")


@dataclass
class Assumptions:
    """What a prediction for a spec without a built run assumes (ours unless cited)."""
    doc_tokens: float = 1000.0       # mean document length of the corpus (tokens)
    chars_per_token: float = 4.0     # for character chunks
    anchor_density: float = 0.043    # anchors per screened token (smoke recipe, stage 0)
    unique_hits: float = 0.88        # distinct candidates per (anchor × top_k) (smoke recipe)
    # accept rates per stage, `policylong bench overhead --stages 4` (docs/performance.md):
    # EntropyLong screens every stage with θ_0; PolicyLong's fall as the checkpoint learns (the
    # last one repeats for more stages)
    accept: dict[str, list[float]] = field(default_factory=lambda: {
        "entropylong": [0.53], "policylong": [0.53, 0.033, 0.022, 0.0097]})

    def accept_rate(self, method: str, stage: int) -> float:
        rates = self.accept.get(method, [0.83])
        return rates[min(stage, len(rates) - 1)]


@dataclass
class Counts:
    """One method's work in one stage."""
    roots: float = 0.0
    root_tokens: float = 0.0          # screened tokens (each root's window)
    anchors: float = 0.0              # = retrieval queries
    candidates: float = 0.0           # verified (root, candidate) pairs
    candidate_tokens: float = 0.0     # prefix tokens used over those pairs
    d_cut_tokens: float = 0.0         # D_cut tokens over those pairs
    distinct_chunks: float = 0.0      # chunks run once as cached prefixes
    queries_nextlong: float = 0.0     # NExtLong's chunk queries
    rows: float = 0.0                 # training rows of target_length
    source: str = "assumed"


def _chunk_tokens(spec, a: Assumptions | None = None) -> float:
    r = spec.retrieval
    return float(r.chunk_size) / ((a or Assumptions()).chars_per_token
                                  if r.chunk_unit == "chars" else 1.0)


def assumed_counts(spec, method: str, stage: int, a: Assumptions, n_chunks: float) -> Counts:
    """The work of one stage from the spec's budgets and ``a`` (no built run)."""
    T, budget = spec.stages.target_length, spec.stages.tokens_per_stage
    sc, chunk = spec.screening, _chunk_tokens(spec, a)
    rows = math.ceil(budget / T)
    if method in ("standard", "random_context", "oracle"):
        return Counts(rows=rows)
    if method == "nextlong":
        roots = budget / T                      # each root's group is filled to T
        return Counts(roots=roots, queries_nextlong=roots * a.doc_tokens / chunk, rows=rows)
    screened = min(a.doc_tokens, sc.window)
    anchors = max(1.0, min(sc.max_anchors, a.anchor_density * screened))
    cands = anchors * spec.retrieval.top_k * a.unique_hits
    acc = a.accept_rate(method, stage)
    pos_tokens = acc * cands * chunk
    neg_tokens = min(sc.negative_ratio * acc, 1 - acc) * cands * chunk \
        if method == "policylong" else 0.0
    group = min(T, a.doc_tokens + pos_tokens + neg_tokens)
    p_group = 1 - (1 - acc) ** cands
    roots = budget / (group * max(p_group, 1e-9))
    d_cut = min(screened, sc.window - 1)
    return Counts(roots=roots, root_tokens=roots * screened, anchors=roots * anchors,
                  candidates=roots * cands, candidate_tokens=roots * cands * min(chunk, sc.window),
                  d_cut_tokens=roots * cands * d_cut,
                  distinct_chunks=min(roots * cands, n_chunks), rows=rows)


def measured_counts(manifest: dict, spec) -> Counts:
    """The work of a built stage, from its dataset manifest's statistics."""
    st = manifest.get("stats", {})

    def g(k, default=0.0):
        v = st.get(k, default)
        return float(v) if isinstance(v, (int, float)) else default

    cands = g("candidates")
    roots = g("roots")
    chunk = _chunk_tokens(spec)
    return Counts(roots=roots, root_tokens=g("root_tokens"), anchors=g("anchors_verified"),
                  candidates=cands,
                  candidate_tokens=g("candidate_tokens", cands * chunk),
                  d_cut_tokens=g("d_cut_tokens", cands * g("root_tokens") / max(roots, 1)),
                  distinct_chunks=cands, rows=float(manifest.get("rows", 0)), source="measured")


def phase_flops(spec, shape: Shape, c: Counts, n_chunks: float) -> dict[str, float]:
    T, sc = spec.stages.target_length, spec.screening
    enc = Shape(**ENCODER_SHAPE, gated_mlp=False)
    q_pieces = (2 * sc.query_window + 1) * QUERY_PIECES_PER_TOKEN + 2   # word pieces per query
    search = 2.0 * ENCODER_DIM * n_chunks * (1.0 if spec.retrieval.index == "flat" else 0.05)
    queries = c.anchors + c.queries_nextlong
    retrieve = queries * (2 * enc.matmul_params * q_pieces + enc.attention(q_pieces, q_pieces)
                          + search)
    screen = shape.forward(c.roots, c.root_tokens / c.roots, c.root_tokens) if c.roots else 0.0
    verify = 0.0
    if c.candidates:
        pre = c.candidate_tokens / c.candidates      # mean prefix length used
        d = c.d_cut_tokens / c.candidates            # mean D_cut length
        anchors_per_root = c.anchors / max(c.roots, 1)
        head = 2.0 * shape.vocab * shape.hidden * c.candidates * anchors_per_root
        if sc.prefix_cache_mb > 0:
            prefixes = shape.forward(c.distinct_chunks, pre, 0)
            rows = c.candidates * (2 * shape.matmul_params * d) \
                + shape.attention(c.candidates * d, pre + d / 2)
            verify = prefixes + rows + head
        else:
            verify = shape.forward(c.candidates, pre + d, 0) + head
    train = 3.0 * shape.forward(c.rows, T, c.rows * T)
    return {"screen": screen, "retrieve": retrieve, "verify": verify, "train": train}


# ------------------------------------------------------------------ calibration

@dataclass
class Calibration:
    """Throughput (FLOP/s) this machine reached on each kind of work, with what was timed."""
    forward: float
    train: float
    encoder: float
    detail: dict = field(default_factory=dict)
    # seconds per retrieval query through the spec's own built index and tokenizer (query text,
    # encoder, search with the root's chunks excluded), when the spec has a built index: the
    # retrieval phase is mostly per-query work, not encoder FLOPs; None: FLOPs / encoder
    query_seconds: float | None = None
    # FLOP/s of the real screening and verification code (``screen_and_verify``) on the spec's
    # own roots and candidates, when the spec has a built index; None: ``forward`` stands in
    screen: float | None = None
    verify: float | None = None
    # seconds a training stage costs beyond its steps (model loading, the optimizer's state
    # loaded and saved, the checkpoint written), from ``train_stage`` run at two step counts
    train_fixed_seconds: float = 0.0

    def rate(self, phase: str) -> float:
        own = getattr(self, phase, None) if phase in ("screen", "verify") else None
        return own if own else getattr(self, CALIBRATION_FOR[phase])


def _built_index(spec) -> bool:
    from harness.layout import cache_dir

    return any((cache_dir(spec) / "index").glob("*/manifest.json"))


def _resources(spec):
    """The spec's tokenizer, base model folder and construction resources (built index)."""
    from transformers import AutoTokenizer

    from harness.construction.driver import prepare_resources
    from harness.experiments.wiring import resolve_inputs
    from harness.layout import cache_dir

    base, corpus = resolve_inputs(spec)
    tok = AutoTokenizer.from_pretrained(str(base))
    return base, prepare_resources(spec, tok, corpus, cache_dir(spec))


def calibrate_queries(spec, n: int = 512) -> float | None:
    """Seconds per query of the real retrieval path (``query_text``, ``embed``, the index's
    ``search`` with the root excluded) on ``n`` queries around random positions of random
    documents, when the spec's token store and index are built; else None."""
    import numpy as np

    if not _built_index(spec):
        return None
    from harness.data.retrieval import embed, query_text

    _, res = _resources(spec)
    tok = res.tokenizer
    cs = res.chunkset()
    rng = np.random.default_rng(0)
    roots = rng.integers(0, len(res.store.ids), n)
    w, bs = spec.screening.query_window, spec.retrieval.batch_size

    def run():
        qs = []
        for r in roots:
            toks = np.asarray(res.store.doc_tokens(int(r)))
            qs.append(query_text(tok, toks, int(rng.integers(0, max(1, len(toks)))), w))
        vecs = embed(res.encoder, qs, bs, progress=False)
        cs.index.search(vecs, spec.retrieval.top_k, exclude_docs=[int(r) for r in roots])

    return _median_time(run, 2) / n


def _median_time(fn, repeats: int = 3) -> float:
    fn()                                          # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pipeline_counts(stats: list[dict]) -> tuple[Counts, dict[str, float]]:
    """The work and the seconds of ``RootScreening.stats`` records, summed."""
    tot: dict[str, float] = {}
    for st in stats:
        for k, v in st.items():
            if isinstance(v, (int, float)):
                tot[k] = tot.get(k, 0.0) + float(v)
    c = Counts(roots=tot.get("roots", 0.0), root_tokens=tot.get("root_tokens", 0.0),
               anchors=tot.get("anchors_verified", 0.0), candidates=tot.get("candidates", 0.0),
               candidate_tokens=tot.get("candidate_tokens", 0.0),
               d_cut_tokens=tot.get("d_cut_tokens", 0.0),
               distinct_chunks=tot.get("candidates", 0.0), source="calibration")
    return c, {ph: tot.get(f"seconds_{ph}", 0.0) for ph in ("screen", "retrieve", "verify")}


def calibrate_pipeline(spec, n_roots: int = 48, repeats: int = 3) -> dict | None:
    """FLOP/s of screening and verification through the real code (``screen_and_verify``, the
    base model screening, the spec's index and settings) on ``n_roots`` random roots, in
    batches of ``screening.batch_size`` as construction runs them; the median of ``repeats``
    after a warm-up batch. None without a built index."""
    import tempfile

    import numpy as np

    if not _built_index(spec):
        return None
    from harness.construction.driver import StageContext
    from harness.construction.screening import screen_and_verify
    from harness.training.model_io import load_eval_model

    base, res = _resources(spec)
    shape, n_chunks = Shape.of(base), _index_size(spec)
    model = load_eval_model(base, "cpu")
    rng = np.random.default_rng(1)
    batch = spec.screening.batch_size
    with tempfile.TemporaryDirectory(prefix="cost-calibration-") as tmp:
        ctx = StageContext(spec=spec, stage=0, target_length=spec.stages.target_length,
                           token_budget=spec.stages.tokens_per_stage, seed=spec.seed,
                           resources=res, screening_model=model, params={}, work_dir=Path(tmp))

        def run(roots):
            stats = []
            for i in range(0, len(roots), batch):
                stats += [r.stats(spec.screening.signal, spec.screening.epsilon)
                          for r in screen_and_verify(ctx, roots[i:i + batch])]
            return pipeline_counts(stats)

        run([int(x) for x in rng.integers(0, len(res.store.ids), batch)])     # warm-up
        rates: dict[str, list[float]] = {"screen": [], "verify": []}
        for _ in range(repeats):
            c, secs = run([int(x) for x in rng.integers(0, len(res.store.ids), n_roots)])
            flops = phase_flops(spec, shape, c, n_chunks)
            for ph in rates:
                if secs[ph] > 0 and flops[ph] > 0:
                    rates[ph].append(flops[ph] / secs[ph])
    out = {ph: statistics.median(v) for ph, v in rates.items() if v}
    out["detail"] = (f"{repeats}× {n_roots} roots through screen_and_verify: "
                     f"{c.candidates / max(c.roots, 1):.1f} candidates a root")
    return out


def _training_rows(spec, n: int, vocab: int, rng) -> tuple:
    """``n`` rows shaped like the spec's training rows: the first built stage dataset's rows
    (tiled) when there is one, else random tokens in groups of T/8 to T/2 (packed groups are
    attended within themselves: the masked path, slower than a plain causal row)."""
    import numpy as np

    from harness.construction.stage_data import StageDataset
    from harness.layout import dataset_dir

    T = spec.stages.target_length
    for k in range(spec.stages.count):
        for m in spec.methods:
            path = dataset_dir(spec, m.label or m.name, k)
            if (path / "manifest.json").is_file():
                ds = StageDataset(path)
                take = np.arange(n) % len(ds)
                return (np.asarray(ds.input_ids)[take], np.asarray(ds.group_index)[take],
                        f"rows of {m.label or m.name}'s stage {k}")
    ids = rng.integers(1, vocab, (n, T))
    gi = np.empty((n, T), dtype=np.int64)
    g = 0
    for r in range(n):
        pos = 0
        while pos < T:
            size = int(rng.integers(T // 8, T // 2 + 1))
            gi[r, pos:pos + size] = g
            pos, g = pos + size, g + 1
    return ids, gi, "random rows in groups of T/8-T/2"


def calibrate_training(spec, model_path: str | Path, steps: tuple[int, int] = (1, 4)
                       ) -> tuple[float, float, str]:
    """(FLOP/s of a training step, seconds a stage costs beyond its steps, what was trained)
    from the real ``train_stage`` (the spec's recipe and context extension, continuous
    schedule, optimizer state saved) on rows shaped like the spec's (``_training_rows``), run
    for ``steps[0]`` and ``steps[1]`` optimizer steps: the slope is the step time, the
    intercept the per-stage cost (after a warm-up stage of one step: the first ``train_stage``
    in a process pays one-time costs)."""
    import tempfile

    import numpy as np

    from harness.construction.stage_data import write_stage_dataset
    from harness.training.stage import plan_steps, train_stage

    shape = Shape.of(model_path)
    T = spec.stages.target_length
    per_step = max(1, spec.train.batch_tokens // T)
    ids, gi, what = _training_rows(spec, steps[1] * per_step, shape.vocab,
                                   np.random.default_rng(0))
    times = []
    with tempfile.TemporaryDirectory(prefix="cost-train-") as tmp:
        for i, n in enumerate((steps[0],) + tuple(steps)):     # the first: warm-up
            ds = write_stage_dataset(Path(tmp) / f"ds-{i}", ids[:n * per_step],
                                     gi[:n * per_step], [], {"method": "cost"})
            planned = plan_steps(n * per_step, T, spec.train, 1)[0]
            if planned != n:   # the rows per step above disagree with the training plan's
                raise RuntimeError(f"training calibration: {n * per_step} rows of {T} tokens "
                                   f"plan {planned} optimizer steps, not {n} (batch_tokens "
                                   f"{spec.train.batch_tokens}, micro_batch "
                                   f"{spec.train.micro_batch})")
            t0 = time.perf_counter()
            train_stage(model_path, ds, spec.train, Path(tmp) / f"ckpt-{i}",
                        extension=spec.context_extension, progress=False, stage=0, stages=2)
            times.append(time.perf_counter() - t0)
    times = times[1:]
    step = max((times[1] - times[0]) / (steps[1] - steps[0]), 1e-9)
    fixed = max(0.0, times[0] - steps[0] * step)
    return 3 * shape.forward(per_step, T, per_step * T) / step, fixed, what


def calibrate(model_path: str | Path, window: int, train_length: int, encoder: str | None,
              query_window: int, batch: int = 8, device: str = "cpu",
              dtype: str = "float32") -> Calibration:
    """Time the screening forward (``batch`` rows of ``window`` tokens, head everywhere, the
    core's block scorer), a training step (forward and backward of 2 rows of ``train_length``)
    and the query encoder (256 queries; skipped when ``encoder`` is None); a few seconds on
    the sandbox model."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from harness.construction.scoring import score_tokens

    shape = Shape.of(model_path)
    model = AutoModelForCausalLM.from_pretrained(str(model_path),
                                                 dtype=getattr(torch, dtype)).to(device)
    model.eval()
    rng = np.random.default_rng(0)
    ids = torch.as_tensor(rng.integers(1, shape.vocab, (batch, window)), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def fwd():
        score_tokens(model, ids)
        sync()

    t_fwd = _median_time(fwd, 7)          # the machine's noise is ±25 % from call to call
    f_fwd = shape.forward(batch, window, batch * window)
    model.train()
    L = train_length
    x = torch.as_tensor(rng.integers(1, shape.vocab, (2, L)), device=device)

    def step():
        out = model(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        sync()

    t_train = _median_time(step, repeats=5)
    f_train = 3 * shape.forward(2, L, 2 * L)
    detail = {"forward": f"{batch}×{window} tokens in {t_fwd:.3f} s",
              "train": f"2×{L} tokens, forward+backward in {t_train:.3f} s",
              "model": str(model_path), "device": device, "dtype": dtype}
    if encoder is None:
        return Calibration(forward=f_fwd / t_fwd, train=f_train / t_train, encoder=float("nan"),
                           detail=detail)
    from harness.data.retrieval import load_encoder

    from harness.sandbox import world

    enc = load_encoder(encoder)
    # queries shaped like the real ones: 2w+1 words of running English-like text
    words = world.haystack(n_sentences=400)["text"].split()
    q = 2 * query_window + 1
    texts = [" ".join(words[i * q:(i + 1) * q]) for i in range(256)]
    t_enc = _median_time(lambda: enc.encode(texts, batch_size=64, show_progress_bar=False), 2)
    e = Shape(**ENCODER_SHAPE, gated_mlp=False)
    pieces = QUERY_PIECES_PER_TOKEN * q + 2
    f_enc = 256 * (2 * e.matmul_params * pieces + e.attention(pieces, pieces))
    detail["encoder"] = f"256 queries in {t_enc:.3f} s"
    return Calibration(forward=f_fwd / t_fwd, train=f_train / t_train, encoder=f_enc / t_enc,
                       detail=detail)


# ------------------------------------------------------------------ prediction

def _built_manifests(spec, label: str) -> dict[int, dict]:
    from harness.layout import dataset_dir

    out = {}
    for k in range(spec.stages.count):
        m = dataset_dir(spec, label, k) / "manifest.json"
        if m.is_file():
            out[k] = json.loads(m.read_text())
    return out


def _index_size(spec) -> float:
    from harness.layout import cache_dir

    sizes = [json.loads(p.read_text()).get("n", 0)
             for p in (cache_dir(spec) / "index").glob("*/manifest.json")]
    if sizes:
        return float(max(sizes))
    return 1e7          # ours: a paper-scale corpus, ~10M chunks, when no index is built


def predict(spec, calibration: Calibration | None, gpu_tflops: float | None = None,
            assumptions: Assumptions | None = None, measured: bool = True) -> list[dict]:
    """One row per method, stage and phase: counts' source, FLOPs, predicted seconds here (with
    a calibration) and on a GPU of ``gpu_tflops`` peak (bf16 dense, TFLOP/s)."""
    a = assumptions or Assumptions()
    shape = Shape.of(spec.model.path if spec.model.path != "sandbox" else _sandbox_model(spec))
    n_chunks = _index_size(spec)
    rows = []
    for m in spec.methods:
        label = m.label or m.name
        built = _built_manifests(spec, label) if measured else {}
        for k in range(spec.stages.count):
            c = measured_counts(built[k], spec) if k in built \
                else assumed_counts(spec, m.name, k, a, n_chunks)
            flops = phase_flops(spec, shape, c, n_chunks)
            for ph in PHASES:
                row = {"method": label, "stage": k, "phase": ph, "counts": c.source,
                       "flops": flops[ph], "roots": c.roots, "candidates": c.candidates}
                if calibration is not None:
                    row["seconds_here"] = flops[ph] / calibration.rate(ph)
                    if ph == "train":
                        row["seconds_here"] += calibration.train_fixed_seconds
                    if ph == "retrieve" and calibration.query_seconds is not None:
                        row["seconds_here"] = (c.anchors + c.queries_nextlong) \
                            * calibration.query_seconds
                if gpu_tflops:
                    row["gpu_seconds"] = flops[ph] / (gpu_tflops * 1e12 * MFU[ph])
                rows.append(row)
    return rows


def _sandbox_model(spec) -> Path:
    """The sandbox's model folder (built or found; the model ships with the package)."""
    from harness.sandbox.build import build_sandbox

    return Path(build_sandbox(spec.sandbox)) / "model"


def measured_seconds(spec) -> dict[tuple[str, int, str], float]:
    """Per (method, stage, phase), the seconds a built run took: construction phases from the
    dataset manifest's timers (``seconds_screen/retrieve/verify``), training from the stage's
    ``stage_metrics.json`` (``train_seconds``)."""
    from harness.layout import dataset_dir

    out = {}
    for m in spec.methods:
        label = m.label or m.name
        for k, man in _built_manifests(spec, label).items():
            st = man.get("stats", {})
            for ph in ("screen", "retrieve", "verify"):
                if isinstance(st.get(f"seconds_{ph}"), (int, float)):
                    out[(label, k, ph)] = float(st[f"seconds_{ph}"])
            sm = dataset_dir(spec, label, k).parent / "stage_metrics.json"
            if sm.is_file():
                t = json.loads(sm.read_text()).get("train_seconds")
                if t is not None:
                    out[(label, k, "train")] = float(t)
    return out


def validation(rows: list[dict], measured: dict, tolerance: float = 0.2) -> list[dict]:
    """Predicted against measured seconds, per method, stage and phase that both have (phases
    under a second are listed but not judged: timer noise)."""
    out = []
    for r in rows:
        key = (r["method"], r["stage"], r["phase"])
        if key not in measured or "seconds_here" not in r:
            continue
        got, pred = measured[key], r["seconds_here"]
        ratio = pred / got if got > 0 else float("inf")
        out.append({"method": r["method"], "stage": r["stage"], "phase": r["phase"],
                    "predicted_s": pred, "measured_s": got, "ratio": ratio,
                    "within": None if got < 1.0 else abs(ratio - 1) <= tolerance})
    return out


def summary_table(rows: list[dict]) -> str:
    """Per method: seconds here and GPU-hours, per phase and in all."""
    by: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        d = by.setdefault(r["method"], {}).setdefault(r["phase"], {"flops": 0.0, "here": 0.0,
                                                                     "gpu": 0.0})
        d["flops"] += r["flops"]
        d["here"] += r.get("seconds_here", 0.0)
        d["gpu"] += r.get("gpu_seconds", 0.0)
    gpu = any("gpu_seconds" in r for r in rows)
    here = any("seconds_here" in r for r in rows)
    head = ["method"] + [f"{p} PFLOP" for p in PHASES] + (["hours here"] if here else []) \
        + (["GPU-hours"] + [f"{p} GPU-h" for p in PHASES] if gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, ph in by.items():
        cells = [method] + [f"{ph[p]['flops'] / 1e15:,.4g}" for p in PHASES]
        if here:
            cells.append(f"{sum(ph[p]['here'] for p in PHASES) / 3600:,.3g}")
        if gpu:
            cells.append(f"{sum(ph[p]['gpu'] for p in PHASES) / 3600:,.4g}")
            cells += [f"{ph[p]['gpu'] / 3600:,.3g}" for p in PHASES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_cost(spec, gpu_tflops: float | None, calibrate_here: bool = True,
             validate: bool = False, assumptions: Assumptions | None = None,
             out: Any = None, train_stages: bool = True) -> dict:
    """What ``policylong cost`` prints: the calibration, the per-method table, the assumptions
    when a stage was not built, and (``validate``) predicted against measured.
    ``train_stages``: calibrate training through ``train_stage`` itself (about 20 s on the
    sandbox; its per-stage fixed cost included), else a bare forward and backward."""
    import sys

    out = out or sys.stdout
    cal = None
    if calibrate_here:
        model = spec.model.path if spec.model.path != "sandbox" else _sandbox_model(spec)
        own = (Path(str(model)) / "config.json").is_file()
        if not own:
            # a hub model cannot be loaded here: the sandbox's model measures the machine
            model = _sandbox_model(spec.model_copy(update={"sandbox": type(spec.sandbox)()}))
        cal = calibrate(model, min(spec.screening.window, 512),
                        min(spec.stages.target_length, 2048), spec.retrieval.encoder,
                        spec.screening.query_window)
        cal.query_seconds = calibrate_queries(spec)
        if cal.query_seconds is not None:
            cal.detail["retrieve"] = (f"{cal.query_seconds * 1e3:.2f} ms per query through "
                                      f"the spec's built index")
        pipe = calibrate_pipeline(spec)
        if pipe is not None:
            cal.screen, cal.verify = pipe.get("screen"), pipe.get("verify")
            cal.detail["screen_verify"] = pipe["detail"]
        # the spec's own stage recipe, when its model is here and its rows fit a CPU
        if train_stages and own and spec.stages.target_length <= TRAIN_CALIBRATION_MAX_LENGTH:
            cal.train, cal.train_fixed_seconds, what = calibrate_training(spec, model)
            cal.detail["train"] = (f"train_stage at 1 and 4 steps on {what}: "
                                   f"{cal.train_fixed_seconds:.1f} s a stage beyond its steps")
        print(f"[calibration] {json.dumps(cal.detail)}", file=out)
        print(f"[calibration] FLOP/s here: forward {cal.forward:.3g}, train {cal.train:.3g}, "
              f"encoder {cal.encoder:.3g}, screen {cal.rate('screen'):.3g}, verify "
              f"{cal.rate('verify'):.3g}; training's fixed cost {cal.train_fixed_seconds:.1f} "
              f"s a stage", file=out)
    rows = predict(spec, cal, gpu_tflops, assumptions)
    for r in rows:
        print(json.dumps(r), file=out)
    print(summary_table(rows), file=out)
    if any(r["counts"] == "assumed" for r in rows):
        a = assumptions or Assumptions()
        print(f"[assumed] stages without a built dataset use: {json.dumps(asdict(a))}",
              file=out)
    if gpu_tflops:
        print(f"[gpu] {gpu_tflops} TFLOP/s peak, MFU assumed {json.dumps(MFU)}", file=out)
    result: dict = {"rows": rows, "calibration": asdict(cal) if cal else None}
    if validate:
        val = validation(rows, measured_seconds(spec))
        if not val:
            print("[validate] no built stage with timed phases in this spec's output_dir",
                  file=out)
        for v in val:
            print(json.dumps({"validate": True, **v}), file=out)
        judged = [v for v in val if v["within"] is not None]
        if judged:
            ok = sum(v["within"] for v in judged)
            print(f"[validate] {ok} of {len(judged)} phases within 20 % of measured", file=out)
        result["validation"] = val
    return result
