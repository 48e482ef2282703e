"""RULER (NVIDIA/RULER, Hsieh et al. 2024): offline generators for its 13 tasks, its metrics and
the per-length average (DESIGN §5b).

    from benchmarks.ruler import generate, full_prompt, score_task
    samples = generate("niah_single_2", tokenizer, 8192, 100, essay_path="PaulGrahamEssays.json")
    prompts = [full_prompt(s) for s in samples]          # input + answer prefix
    score = score_task("niah_single_2", predictions, [s["outputs"] for s in samples])

Templates, answer prefixes, needles, haystacks, depths, chains, word-list constructions,
tokens_to_generate, the default seed (42) and the size searches follow NVIDIA's scripts
(``scripts/data/synthetic/*.py``, ``scripts/synthetic.yaml``); metrics follow
``scripts/eval``. Deviations, and why:

- Words: wonderwords 3.0.0's lists are shipped as package data (``data/*.txt``, read by
  ``words``; no dependency, same words everywhere). Adjective-noun keys are drawn by index over
  the adjective x noun product rather than by ``random.choice`` over the 6.2M-key sorted list:
  no 6.2M-string list in memory, and the same distribution but for the two adjectives the list
  repeats ("wet", "nasty"), whose keys come up twice as often.
- cwe: RULER samples ``english_words.json`` (8.5 MB, LFS) when a length needs more than the
  8,166 wonderwords; we cap at 8,166 and log a warning (prompts then fall short of the budget;
  by estimate this happens only for tokenizers denser than Qwen2's at 128K).
- Sentence splitting for the essay haystack is a regex (``common.split_sentences``), not nltk's
  punkt, which needs a data download. Sentences are re-joined with spaces, so it only moves
  where needles may be inserted; the text is unchanged.
- Lengths below what RULER was written for: where the reference would loop forever (its
  smallest haystack overflows), we search below the increment and shrink by 1; a task that
  cannot fit at all raises ``TooShort`` (cwe and vt need roughly 1.5-2K tokens). cwe switches
  to the reference's full construction at 4,096 (a 40-word example at 10x/3x, the task at
  ``freq_cw`` 30 / ``freq_ucw`` 3): at least 490 numbered words, which fit 4,096 only for a
  tokenizer spending under ~8 tokens a word. The sandbox tokenizer spends 9.4 (~4.6K tokens), so
  there cwe runs at 2,048 (the smaller construction) and is reported too short at 4,096, as the
  reference's own sizing implies. Above that,
  sizing is the reference's, including its coarse shrink steps (500 essay words, 25 noise
  lines, budget/32 fwe words), so sample lengths vary below ``max_seq_length`` as RULER's do.
- vt draws distinct variable names by rejection (the reference appends a name on a collision,
  which can add a stray chain). qa never uses fewer documents than the gold ones (the reference
  fails there).
- RNGs are ``random.Random(seed)`` / ``np.random.RandomState(seed)`` per call instead of global
  state, and there is no chunking: sample i asks QA question i. Exact strings differ from
  RULER's files; distributions do not.
- Only RULER's ``base`` model template; no ``remove_newline_tab``. ``index`` is the sample
  number (RULER's niah overwrites it with the answer's character offset).
- zeta (fwe) is computed here instead of with scipy.
- Tokens are counted without special tokens, as RULER does; a tokenizer that adds BOS serves
  one token more, so give the engine headroom over ``max_seq_length``.
- The essay comes from ``essay_path`` (RULER's ``PaulGrahamEssays.json``) or, without it, the
  hub dataset ``baber/paul_graham_essays`` (lm-eval's route); qa_1 / qa_2 need ``qa_path`` (the
  official SQuAD v2 dev / HotpotQA distractor dev JSON). Otherwise ``generate`` raises
  ``NotRun``: such tasks are reported as not run and left out of ``average_per_length``.
"""
from benchmarks.ruler.common import TooShort
from benchmarks.ruler.generate import NotRun, full_prompt, generate
from benchmarks.ruler.metrics import (
    LengthAverage,
    average_per_length,
    metric_name,
    postprocess_pred,
    score_task,
    string_match_all,
    string_match_part,
)
from benchmarks.ruler.templates import OFFLINE_TASKS, QA_TASKS, TASKS

# Bumped whenever a change moves generated samples (recorded in evaluation provenance).
GENERATOR_VERSION = "1"

__all__ = [
    "GENERATOR_VERSION", "TASKS", "OFFLINE_TASKS", "QA_TASKS", "NotRun", "TooShort", "generate",
    "full_prompt",
    "score_task", "metric_name", "postprocess_pred", "string_match_all", "string_match_part",
    "average_per_length", "LengthAverage",
]
