"""LongBench-v2 against the official code's behaviour (THUDM/LongBench pred.py, result.py, prompts/)
on the shared 12-item sample, with a small BPE tokenizer trained here."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from benchmarks import longbench_v2 as LB

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "longbench_v2_sample.json"

# prompts/0shot.txt as published (an independent copy, so a drift in the module is caught)
OFFICIAL_0SHOT = """Please read the following text and answer the question below.

<text>
$DOC$
</text>

What is the correct answer to this question: $Q$
Choices:
(A) $C_A$
(B) $C_B$
(C) $C_C$
(D) $C_D$

Format your response as follows: "The correct answer is (insert answer here)"."""


@pytest.fixture(scope="module")
def items():
    if not SAMPLE.is_file():
        pytest.skip(f"LongBench-v2 sample not found at {SAMPLE} (shared reference data absent)")
    return LB.load_items(SAMPLE)


@pytest.fixture(scope="module")
def tokenizer(items, tmp_path_factory):
    from transformers import AutoTokenizer

    from harness.sandbox.tokenizer import train_tokenizer

    texts = [it["context"][:20000] for it in items] + [OFFICIAL_0SHOT]
    out = train_tokenizer(texts, 800, tmp_path_factory.mktemp("lb2tok"), model_max_length=1 << 20)
    return AutoTokenizer.from_pretrained(str(out))


class CharTokenizer:
    """One id per character: makes the kept head/tail lengths exact and visible."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


# ------------------------------------------------------------------ loading

def test_sample_loads_in_official_schema(items, tmp_path):
    assert len(items) == 12
    assert all(set(LB.FIELDS) <= set(it) for it in items)
    jsonl = tmp_path / "lb2.jsonl"
    jsonl.write_text("\n".join(json.dumps(it) for it in items[:3]) + "\n")
    assert LB.load_items(jsonl) == items[:3]


@pytest.mark.parametrize("field", ["choice_C", "answer", "context"])
def test_missing_field_names_item_and_field(items, tmp_path, field):
    bad = [dict(it) for it in items[:5]]
    del bad[3][field]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(LB.LongBenchV2Error) as e:
        LB.load_items(path)
    msg = str(e.value)
    assert "item 3" in msg and items[3]["_id"] in msg and f"'{field}'" in msg


def test_bad_values_are_named(items, tmp_path):
    bad = [dict(it) for it in items[:2]]
    bad[1]["difficulty"] = "medium"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(LB.LongBenchV2Error, match=r"item 1 .*'difficulty' is 'medium'"):
        LB.load_items(path)
    path.write_text(json.dumps(items[0]) + "\n{not json\n")
    with pytest.raises(LB.LongBenchV2Error, match="line 2"):
        LB.load_items(path)


def test_offline_without_file_asks_for_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LB.LongBenchV2Error, match="offline.*path of a file"):
        LB.load_items(None)


# ------------------------------------------------------------------ prompts

def test_prompt_is_the_official_template(items):
    it = items[0]
    expected = (OFFICIAL_0SHOT.replace("$DOC$", it["context"].strip())
                .replace("$Q$", it["question"].strip())
                .replace("$C_A$", it["choice_A"].strip()).replace("$C_B$", it["choice_B"].strip())
                .replace("$C_C$", it["choice_C"].strip()).replace("$C_D$", it["choice_D"].strip()))
    assert LB.TEMPLATE_0SHOT == OFFICIAL_0SHOT
    assert LB.fill_template(LB.TEMPLATE_0SHOT, it) == expected
    for it in items:
        p = LB.fill_template(LB.TEMPLATE_0SHOT, it)
        assert not re.search(r"\$(DOC|Q|C_[A-D]|COT)\$", p)   # every placeholder filled
        assert p.endswith(f"(D) {it['choice_D'].strip()}\n\nFormat your response as follows: "
                          '"The correct answer is (insert answer here)".')


def test_cot_prompts_follow_the_official_two_passes(items):
    it = items[1]
    cot = LB.fill_template(LB.TEMPLATE_0SHOT_COT, it)
    assert cot.startswith("Please read the following text and answer the questions below.")
    assert cot.endswith("(D) " + it["choice_D"].strip() + "\n\nLet\u2019s think step by step:")
    ans = LB.fill_template(LB.TEMPLATE_0SHOT_COT_ANS, it, cot="Step 1. It is B.")
    assert it["context"].strip()[:200] not in ans
    assert "\n\nThe text is too long and omitted here.\n\n" in ans
    assert ans.endswith("Let\u2019s think step by step: Step 1. It is B.\n\nBased on the above, "
                        "what is the single, most likely answer choice? Format your response as "
                        'follows: "The correct answer is (insert answer here)".')


def test_completion_prompt_is_official_text_plus_answer_prefix(items):
    p = LB.fill_template(LB.TEMPLATE_0SHOT, items[2])
    assert LB.completion_prompt(p) == p + "\n\nThe correct answer is"


# ------------------------------------------------------------------ truncation

@pytest.mark.parametrize("max_len", [100, 101])
def test_truncation_keeps_first_and_last_half_exactly(max_len):
    prompt = "".join(chr(ord("a") + i % 26) for i in range(1000))
    out = LB.truncate_middle(prompt, CharTokenizer(), max_len)
    head, tail = max_len // 2, max_len - max_len // 2      # pred.py: ids[:n//2] + ids[-n//2:]
    assert len(out) == max_len
    assert out == prompt[:head] + prompt[-tail:]
    assert LB.truncate_middle(prompt[:max_len], CharTokenizer(), max_len) == prompt[:max_len]


def test_truncation_with_trained_tokenizer_keeps_head_and_tail_and_fits(items, tokenizer):
    max_len = 2000
    for it in items[:4]:
        prompt = LB.fill_template(LB.TEMPLATE_0SHOT, it)
        ids = tokenizer.encode(prompt)
        assert len(ids) > max_len
        out = LB.truncate_middle(prompt, tokenizer, max_len)
        assert out.startswith(tokenizer.decode(ids[:max_len // 2 - 1]))
        assert out.endswith(tokenizer.decode(ids[-max_len // 2 + 1:]))
        assert out.startswith("Please read the following text")
        assert out.endswith('"The correct answer is (insert answer here)".')
        assert it["question"].strip() in out
        assert len(tokenizer.encode(out)) <= max_len
        assert len(out) < len(prompt)


# ------------------------------------------------------------------ answers

@pytest.mark.parametrize("response,expected", [
    ("The correct answer is (B)", "B"),
    ("**The correct answer is (C)**", "C"),
    ("The correct answer is *(B)*.", "B"),
    ("The correct answer is D.", "D"),
    ("Reasoning... The correct answer is (A). Later: The correct answer is (B)", "A"),
    ("The correct answer is B) or maybe (C)", "B"),
    ("The correct answer is Apple", "A"),              # the official bare regex takes the A
    ("the correct answer is (A)", None),               # case-sensitive
    ("The correct answer is: (A)", None),
    ("The correct answer is  (B)", None),
    ("The correct answer is (E)", None),
    ("The correct answer is (insert answer here)", None),
    ("Answer: B", None),
    ("", None),
])
def test_extract_answer_mirrors_official_regexes(response, expected):
    assert LB.extract_answer(response) == expected


def _rec(difficulty, length, judge, pred="A"):
    return {"difficulty": difficulty, "length": length, "judge": judge, "pred": pred}


def test_accuracy_breakdowns_as_result_py():
    recs = [_rec("easy", "short", True), _rec("easy", "medium", False, None),
            _rec("hard", "long", True), _rec("hard", "short", False),
            _rec("hard", "medium", True)]
    acc = LB.accuracy(recs)
    assert acc == {"overall": 60.0, "easy": 50.0, "hard": 66.7, "short": 50.0, "medium": 50.0,
                   "long": 100.0, "n": {"overall": 5, "easy": 2, "hard": 3, "short": 2,
                                        "medium": 2, "long": 1}}
    comp = LB.accuracy(recs, compensated=True)
    assert (comp["overall"], comp["easy"], comp["medium"]) == (65.0, 62.5, 62.5)
    only_easy = LB.accuracy([_rec("easy", "short", True)])
    assert only_easy["hard"] is None and only_easy["long"] is None and only_easy["easy"] == 100.0


# ------------------------------------------------------------------ end to end with a fake model

def test_run_completion_and_cot(items, tokenizer):
    calls = []

    def generate(prompts, *, max_new_tokens, temperature, stop):
        calls.append((prompts, max_new_tokens, temperature))
        if max_new_tokens == LB.MAX_NEW_TOKENS_COT:
            return [" Let me see. " for _ in prompts]
        return [f" ({it['answer']})" if i % 2 == 0 else " unsure" for i, it in enumerate(items)]

    recs = LB.run(items, generate, tokenizer, completion=True, max_len=3000)
    assert len(calls) == 1 and calls[0][1:] == (128, 0.1)
    assert all(p.endswith("\n\nThe correct answer is") for p in calls[0][0])
    assert all(len(tokenizer.encode(p)) <= 3000 + 10 for p in calls[0][0])
    assert [r["pred"] for r in recs[:2]] == [items[0]["answer"], None]
    assert LB.accuracy(recs)["overall"] == 50.0
    assert all(len(r["context"]) <= 1000 for r in recs)

    calls.clear()
    recs = LB.run(items, generate, tokenizer, completion=True, cot=True, max_len=3000)
    (cot_prompts, n1, _), (ans_prompts, n2, _) = calls
    assert (n1, n2) == (1024, 128)
    assert all(p.endswith("Let\u2019s think step by step:") for p in cot_prompts)
    assert all("Let\u2019s think step by step: Let me see.\n\nBased on the above" in p
               for p in ans_prompts)
    assert recs[0]["response_cot"] == "Let me see." and recs[0]["judge"] is True


def test_run_chat_wraps_the_truncated_prompt(items, tokenizer):
    def generate(prompts, **kw):
        return ["**The correct answer is (" + it["answer"] + ")**" for it in items]

    with pytest.raises(LB.LongBenchV2Error, match="chat template"):
        LB.run(items, generate, tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    try:
        seen = []
        recs = LB.run(items, lambda p, **kw: seen.extend(p) or generate(p), tokenizer, max_len=1500)
    finally:
        tokenizer.chat_template = None
    assert all(p.startswith("<u>Please read") and p.endswith("here)\".</u><a>") for p in seen)
    assert LB.accuracy(recs)["overall"] == 100.0


# ------------------------------------------------------------------ preset: official

# A ChatML template with Qwen2.5's default system message (its no-tools branch), and the same
# conversation written out by hand: what vLLM's OpenAI server builds from pred.py's request.
CHATML = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
          "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou "
          "are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
          "{%- endif %}{%- for message in messages %}{%- if message.role != 'system' %}"
          "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
          "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}"
          "{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def chatml_by_hand(user: str) -> str:
    return ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\n" + user + "<|im_end|>\n"
            "<|im_start|>assistant\n")


def pred_py_prompt(template: str, item: dict, tokenizer, max_len: int = 120000,
                   cot: str | None = None) -> str:
    """pred.py (THUDM/LongBench, LongBench-v2): the replace chain, then query_llm's middle
    truncation for a model in model_map, then the request's single user message."""
    prompt = template.replace('$DOC$', item['context'].strip()).replace(
        '$Q$', item['question'].strip()).replace('$C_A$', item['choice_A'].strip()).replace(
        '$C_B$', item['choice_B'].strip()).replace('$C_C$', item['choice_C'].strip()).replace(
        '$C_D$', item['choice_D'].strip())
    if cot is not None:
        prompt = prompt.replace('$COT$', cot)
    input_ids = tokenizer.encode(prompt)
    if len(input_ids) > max_len:
        input_ids = input_ids[:max_len // 2] + input_ids[-max_len // 2:]
        prompt = tokenizer.decode(input_ids, skip_special_tokens=True)
    return chatml_by_hand(prompt)


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def official_file(items, tmp_path_factory):
    """The 12 items, plus one whose context is all 12 contexts (past 120,000 tokens here)."""
    long_item = dict(items[0], _id="long-one",
                     context="\n\n".join(it["context"] for it in items))
    path = tmp_path_factory.mktemp("lb2official") / "lb2.json"
    path.write_text(json.dumps(items + [long_item]))
    return path


def official(path, **params):
    from benchmarks.adapters import LongBenchV2
    from harness.config import BenchmarkEntry

    return LongBenchV2(BenchmarkEntry(name="longbench_v2", preset="official",
                                      params={"path": str(path), **params}))


def test_official_preset_prompts_equal_pred_py_at_128k(official_file, chat_tokenizer):
    """The done-when check: every item's prompt at 131,072 is pred.py's request text."""
    bench = official(official_file)
    samples = bench.samples("overall", 131072, chat_tokenizer, n=3)   # official: every item
    data = json.loads(official_file.read_text())
    assert len(samples) == len(data) == 13
    for s, item in zip(samples, data):
        assert s.prompt == pred_py_prompt(OFFICIAL_0SHOT, item, chat_tokenizer)
        assert (s.temperature, s.max_new_tokens, s.add_special_tokens) == (0.1, 128, False)
        assert s.seed is not None
    # the long item was middle-truncated to 120,000 tokens; the others fit whole
    assert len(chat_tokenizer.encode(data[-1]["context"])) > 120000
    user = samples[-1].prompt.split("<|im_start|>user\n", 1)[1].rsplit("<|im_end|>", 1)[0]
    assert "</text>" in user and user.startswith("Please read the following text")
    assert len(chat_tokenizer.encode(user)) <= 120000 + 2
    assert samples[0].prompt == chatml_by_hand(LB.fill_template(LB.TEMPLATE_0SHOT, data[0]))
    assert len({s.seed for s in samples}) == 13


def test_official_cot_two_passes_and_dropped_items(official_file, chat_tokenizer, items):
    bench = official(official_file, cot=True, samples=4, seed=1)
    samples = bench.samples("overall", 131072, chat_tokenizer, n=100)
    data = [it for it in json.loads(official_file.read_text())
            if it["_id"] in {s.meta["item"]["_id"] for s in samples}]
    assert len(samples) == 4
    official_cot = OFFICIAL_0SHOT.replace("question below", "questions below").replace(
        'Format your response as follows: "The correct answer is (insert answer here)".',
        "Let\u2019s think step by step:")
    for s, item in zip(samples, data):
        assert s.prompt == pred_py_prompt(official_cot, item, chat_tokenizer)
        assert s.max_new_tokens == 1024
    cots = ["  A chain of thought. ", "", "x", "Because (B)."]
    answer = bench.followup("overall", samples, cots, chat_tokenizer, 1)
    assert answer[1] is None                          # an empty CoT: pred.py drops the item
    ans_template = ("Please read the following text and answer the questions below.\n\n"
                    "The text is too long and omitted here.\n\nWhat is the correct answer to "
                    "this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n(D) $C_D$"
                    "\n\nLet\u2019s think step by step: $COT$\n\nBased on the above, what is "
                    "the single, most likely answer choice? Format your response as follows: "
                    "\"The correct answer is (insert answer here)\".")
    for a, item, c in zip(answer, data, cots):
        if a is not None:
            assert a.prompt == pred_py_prompt(ans_template, item, chat_tokenizer, cot=c.strip())
            assert (a.max_new_tokens, a.temperature) == (128, 0.1)
    assert bench.followup("overall", samples, cots, chat_tokenizer, 2) is None
    assert samples[0].meta["write"]["response_cot"] == "A chain of thought."
    finals = [f"The correct answer is ({data[0]['answer']})", "", "", "no idea"]
    score = bench.score("overall", samples, finals)
    assert score.breakdown["dropped"] == 2.0
    assert score.value == 50.0                        # 1 right of the 2 kept
    assert math.isnan(score.per_sample[1]) and score.per_sample[0] == 100.0


def test_official_preset_needs_a_chat_template(official_file, tokenizer):
    from harness.evaluation.runner import NotRun

    with pytest.raises(NotRun, match="chat template.*none.*preset harness"):
        official(official_file).samples("overall", 131072, tokenizer, 1)


def test_official_selection_all_or_seeded_sample(official_file, chat_tokenizer):
    import random

    data = json.loads(official_file.read_text())
    picked = official(official_file, samples=5, seed=3).select(100)
    keep = sorted(random.Random(3).sample(range(13), 5))
    assert [it["_id"] for it in picked] == [data[i]["_id"] for i in keep]
    assert keep != list(range(5))
    assert official(official_file, samples=5, seed=3).select(1) == picked
    assert len(official(official_file).select(2)) == 13
    assert len(official(official_file, samples="all").select(2)) == 13


def test_open_prompt_ends_at_the_official_text_and_reads_the_response_as_written(
        official_file, tokenizer):
    """``prompt: open`` (ours, preset harness): the completion prompt less its answer prefix,
    so that a base model writes the whole answer line; the response is scored as written (a
    bare `` (B)`` has no answer line), and the provenance says which form ran."""
    from benchmarks.adapters import LongBenchV2
    from harness.config import BenchmarkEntry

    def harness(**params):
        return LongBenchV2(BenchmarkEntry(name="longbench_v2",
                                          params={"path": str(official_file), **params}))

    completion, open_ = harness(), harness(prompt="open")
    c = completion.samples("overall", 4096, tokenizer, 3)
    o = open_.samples("overall", 4096, tokenizer, 3)
    for x, y in zip(c, o):
        assert y.prompt.endswith(LB.COMPLETION_SEPARATOR)
        assert x.prompt == y.prompt + LB.COMPLETION_ANSWER_PREFIX
        assert y.add_special_tokens and y.meta["item"] == x.meta["item"]
    right = o[0].references[0]
    wrong = "ABCD"[("ABCD".index(right) + 1) % 4]
    said = [f"chevar. The correct answer is ({right}).", f" ({right})",
            f"The correct answer is ({wrong})."]
    assert open_.score("overall", [o[0]] * 3, said).per_sample == [100.0, 0.0, 0.0]
    assert completion.score("overall", c[:1], [f" ({right})"]).per_sample == [100.0]
    assert "open completion" in open_.provenance()["template"]
    assert "open" not in completion.provenance()["template"]
    with pytest.raises(ValueError, match="params.prompt: open is for preset harness"):
        official(official_file, prompt="open")


@pytest.mark.parametrize("params,match", [
    ({"prompt": "completion"}, "preset harness"), ({"reserve": 10}, "preset harness"),
    ({"samples": 0}, "params.samples"), ({"samples": "some"}, "params.samples"),
    ({"cot": "yes"}, "params.cot")])
def test_official_preset_rejects_harness_only_params(official_file, params, match):
    with pytest.raises(ValueError, match=match):
        official(official_file, **params)


def test_official_short_length_uses_the_ratio_or_is_not_run(official_file, chat_tokenizer):
    from harness.evaluation.runner import NotRun

    assert LB.official_max_len(131072) == 120000 == LB.official_max_len(262144)
    assert LB.official_max_len(32768) == 30000
    s = official(official_file, samples=2).samples("overall", 32768, chat_tokenizer, 1)
    assert all(len(chat_tokenizer(x.prompt, add_special_tokens=False)["input_ids"]) + 128
               <= 32768 for x in s)
    with pytest.raises(NotRun, match="too short for the official budget"):
        official(official_file, samples=2).samples("overall", 600, chat_tokenizer, 1)


def test_provenance_names_preset_file_hash_template_and_decoding(official_file,
                                                                  chat_tokenizer):
    import hashlib

    from benchmarks.adapters import LongBenchV2
    from harness.config import BenchmarkEntry

    bench = official(official_file, samples=3)
    bench.samples("overall", 131072, chat_tokenizer, 1)
    p = bench.provenance()
    assert p["preset"] == "official"
    assert p["data"]["path"] == str(official_file.resolve())
    assert p["data"]["sha256"] == hashlib.sha256(official_file.read_bytes()).hexdigest()
    assert "prompts/0shot.txt" in p["template"] and "chat template (sha256" in p["template"]
    assert p["decoding"]["temperature"] == 0.1 and p["decoding"]["max_new_tokens"] == 128
    assert "seeded random sample of 3 of 13" in p["samples"]["selection"]
    assert p["empty_outputs"].startswith("dropped")
    h = LongBenchV2(BenchmarkEntry(name="longbench_v2", params={"path": str(official_file)}))
    hp = h.provenance()
    assert hp["preset"] == "harness" and hp["decoding"]["temperature"] == 0.0
    assert "completion" in hp["template"] and hp["empty_outputs"] == "scored wrong"
    assert "first eval.samples_per_task" in hp["samples"]["selection"]


def test_cot_tokens_caps_the_cot_pass_and_sets_the_default_reserve(official_file, tokenizer):
    """``cot_tokens`` (ours, preset harness) caps the CoT pass's new tokens, and the default
    reserve follows it, so a small context can run the two passes; without it the CoT pass
    keeps pred.py's 1,024. It needs ``cot: true`` and is refused under the official preset."""
    from benchmarks.adapters import LongBenchV2
    from harness.config import BenchmarkEntry

    def harness(**params):
        return LongBenchV2(BenchmarkEntry(name="longbench_v2",
                                          params={"path": str(official_file), **params}))

    capped = harness(cot=True, cot_tokens=32)
    first = capped.samples("overall", 512, tokenizer, n=2)
    assert [s.max_new_tokens for s in first] == [32, 32]
    assert capped.reserve == 128 + 32
    assert all(len(tokenizer(s.prompt)["input_ids"]) <= 512 - 160 for s in first)
    answer = capped.followup("overall", first, [" A fact.", " Another."], tokenizer, 1)
    assert [s.max_new_tokens for s in answer] == [LB.MAX_NEW_TOKENS] * 2
    assert capped.provenance()["decoding"]["max_new_tokens_cot"] == 32
    assert harness(cot=True, cot_tokens=400).reserve == 432
    full = harness(cot=True)
    assert full.reserve == LB.MAX_NEW_TOKENS_COT + 32
    assert full.samples("overall", 4096, tokenizer, n=1)[0].max_new_tokens == 1024
    with pytest.raises(ValueError, match="cot_tokens"):
        harness(cot_tokens=32)
    for bad in (0, "32", 2.5, True):
        with pytest.raises(ValueError, match="cot_tokens must be a positive integer"):
            harness(cot=True, cot_tokens=bad)
    with pytest.raises(ValueError, match="cot_tokens"):
        official(official_file, cot=True, cot_tokens=32)


@pytest.mark.parametrize("key,bad", [("reserve", 0), ("reserve", "160"), ("reserve", 12.5),
                                     ("seed", -1), ("seed", "3"), ("seed", False)])
def test_integer_params_are_refused_by_name_not_cast(official_file, key, bad):
    """``reserve`` and ``seed`` take integers as given: ``"160"`` or ``12.5`` is named, not
    cast (a float reserve would otherwise be truncated without a word)."""
    from benchmarks.adapters import LongBenchV2
    from harness.config import BenchmarkEntry

    def harness(**params):
        return LongBenchV2(BenchmarkEntry(name="longbench_v2",
                                          params={"path": str(official_file), **params}))

    assert harness(**{key: 7}).__dict__[key] == 7
    with pytest.raises(ValueError, match=rf"longbench_v2: params\.{key} must be"):
        harness(**{key: bad})
