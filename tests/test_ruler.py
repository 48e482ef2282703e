"""RULER generators, metrics and per-length averaging (benchmarks/ruler).

Two tokenizers are trained here with Qwen2's pipeline: a small one (vocab 1024) and a
"Qwen-style" one (a larger vocab on more text). The essay haystack is RULER's
PaulGrahamEssays.json from ../shared/data; tests that need it skip when it is absent.
"""
import json
import math
import re
from pathlib import Path

import pytest

from benchmarks.ruler import (OFFLINE_TASKS, QA_TASKS, TASKS, NotRun, TooShort, average_per_length,
                              full_prompt, generate, metric_name, postprocess_pred, score_task,
                              string_match_all, string_match_part)
from benchmarks.ruler.common import split_sentences
from benchmarks.ruler.templates import NOISE

ESSAY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "PaulGrahamEssays.json"
ESSAY_TASKS = [t for t in OFFLINE_TASKS if TASKS[t].args.get("type_haystack") == "essay"]
LENGTHS = (2048, 3072, 8192)  # below and above the 4K switches in cwe/vt/niah sizing


def _needs_essay(task):
    if task in ESSAY_TASKS and not ESSAY.exists():
        pytest.skip(f"essay haystack {ESSAY} is absent (RULER's PaulGrahamEssays.json)")
    return ESSAY if task in ESSAY_TASKS else None


def _training_lines():
    if ESSAY.exists():
        text = json.loads(ESSAY.read_text(encoding="utf-8"))["text"]
        return [line for line in text.splitlines() if line.strip()]
    from benchmarks.ruler.words import NOUNS
    return [NOISE] * 50 + [" ".join(NOUNS[i:i + 40]) for i in range(0, len(NOUNS), 40)]


@pytest.fixture(scope="module", params=[("small", 1024, 300), ("qwen_style", 16000, 3000)],
                ids=lambda p: p[0])
def tokenizer(request, tmp_path_factory):
    from transformers import AutoTokenizer

    from harness.sandbox.tokenizer import train_tokenizer

    name, vocab, lines = request.param
    out = train_tokenizer(_training_lines()[:lines], vocab, tmp_path_factory.mktemp(name),
                          model_max_length=1 << 20)
    return AutoTokenizer.from_pretrained(str(out))


def _count(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("length", LENGTHS)
def test_offline_tasks_fit_and_contain_answers(tokenizer, length):
    for task in OFFLINE_TASKS:
        if task in ESSAY_TASKS and not ESSAY.exists():
            continue  # reported by the skip of test_essay_tasks_need_the_file
        samples = generate(task, tokenizer, length, 2, seed=42, essay_path=_needs_essay(task))
        assert [s["index"] for s in samples] == [0, 1]
        for s in samples:
            prompt_tokens = _count(tokenizer, full_prompt(s))
            assert s["length"] == prompt_tokens + s["max_new_tokens"] <= length, task
            assert s["length"] > length // 2, (task, s["length"])  # sized, not tiny
            assert s["max_new_tokens"] == TASKS[task].tokens_to_generate
            assert s["task"] == task and s["max_length"] == length
            assert s["answer_prefix"].startswith(" ")
            assert s["outputs"] and all(o in s["input"] for o in s["outputs"]), task


def test_essay_tasks_need_the_file():
    _needs_essay(ESSAY_TASKS[0])
    assert len(ESSAY_TASKS) == 5


def test_task_table_and_metric_mapping():
    assert len(TASKS) == 13 and len(OFFLINE_TASKS) == 11 and set(QA_TASKS) == {"qa_1", "qa_2"}
    assert {t: metric_name(t) for t in QA_TASKS} == {"qa_1": "string_match_part",
                                                     "qa_2": "string_match_part"}
    assert {metric_name(t) for t in OFFLINE_TASKS} == {"string_match_all"}
    ttg = {t: s.tokens_to_generate for t, s in TASKS.items()}
    assert ttg["niah_single_1"] == 128 and ttg["vt"] == 30 and ttg["cwe"] == 120
    assert ttg["fwe"] == 50 and ttg["qa_1"] == 32
    with pytest.raises(KeyError, match="did you mean 'niah_single_1'"):
        generate("niah_singel_1", None, 4096, 1)


def test_niah_formats(tokenizer):
    single = generate("niah_single_1", tokenizer, 2048, 1)[0]
    assert single["input"].startswith("A special magic number is hidden")
    key = single["input"].rsplit("for ", 1)[1].split(" mentioned")[0]
    adj, noun = key.split("-", 1)
    assert adj and noun
    assert f"One of the special magic numbers for {key} is: {single['outputs'][0]}." in \
        single["input"]
    assert len(single["outputs"][0]) == 7 and single["outputs"][0].isdigit()
    assert single["answer_prefix"] == (f" The special magic number for {key} mentioned in the "
                                       "provided text is")
    uuids = generate("niah_multikey_3", tokenizer, 2048, 1)[0]
    assert uuids["outputs"][0].count("-") == 4 and uuids["outputs"][0][14] == "4"  # version 4
    assert uuids["input"].count("One of the special magic uuids for") > 5  # needle haystack


def test_multi_answer_tasks(tokenizer):
    if not ESSAY.exists():
        pytest.skip(f"essay haystack {ESSAY} is absent")
    mv = generate("niah_multivalue", tokenizer, 3072, 1, essay_path=ESSAY)[0]
    assert len(mv["outputs"]) == 4 and mv["input"].startswith("Some special magic numbers")
    assert mv["answer_prefix"].endswith("mentioned in the provided text are")
    mq = generate("niah_multiquery", tokenizer, 3072, 1, essay_path=ESSAY)[0]
    assert len(mq["outputs"]) == 4 and ", and " in mq["answer_prefix"]


def test_vt_cwe_fwe_structure(tokenizer):
    vt = generate("vt", tokenizer, 3072, 1)[0]
    names = vt["outputs"]
    assert len(names) == 5 and all(len(n) == 5 and n.isupper() for n in names)
    value = vt["answer_prefix"].split("the value ")[1].split(",")[0]
    assert f"VAR {names[0]} = {value}" in vt["input"]
    assert all(f"VAR {b} = VAR {a} " in vt["input"] for a, b in zip(names, names[1:]))
    assert vt["input"].count("Memorize and track") == 2  # the in-context example first
    cwe = generate("cwe", tokenizer, 8192, 1)[0]
    body = cwe["input"].rsplit("appear most often.\n", 1)[1].split("\nQuestion:")[0]
    words = re.split(r"(?:^| )\d+\. ", body)[1:]  # "1. w1 2. w2 ..."
    assert sorted(set(cwe["outputs"])) == sorted(cwe["outputs"]) and len(cwe["outputs"]) == 10
    assert all(words.count(w) == 30 for w in cwe["outputs"])
    assert all(words.count(w) == 3 for w in set(words) - set(cwe["outputs"]))
    fwe = generate("fwe", tokenizer, 3072, 1)[0]
    coded = fwe["input"].split("coded words. ", 1)[1].split("\nQuestion:")[0].split(" ")
    counts = sorted(((coded.count(w), w) for w in set(coded)), reverse=True)
    assert counts[0][1] == "..." and [w for _, w in counts[1:4]] == fwe["outputs"]


def test_too_short_lengths_raise(tokenizer):
    with pytest.raises(TooShort):
        generate("cwe", tokenizer, 512, 1)


def test_determinism_by_seed(tokenizer):
    essay = ESSAY if ESSAY.exists() else None
    tasks = ["niah_multikey_2", "vt", "cwe", "fwe"] + (["niah_multivalue"] if essay else [])
    for task in tasks:
        a = generate(task, tokenizer, 2048, 2, seed=7, essay_path=essay)
        b = generate(task, tokenizer, 2048, 2, seed=7, essay_path=essay)
        c = generate(task, tokenizer, 2048, 2, seed=8, essay_path=essay)
        assert a == b, task
        assert a[0]["input"] != c[0]["input"] and a[0]["outputs"] != c[0]["outputs"], task
        assert a[0]["outputs"] != a[1]["outputs"], task  # samples differ from each other


def test_qa_without_files_is_not_run():
    for task, needle in (("qa_1", "SQuAD"), ("qa_2", "HotpotQA")):
        with pytest.raises(NotRun, match=needle) as err:
            generate(task, None, 4096, 1)
        assert err.value.task == task and "qa_path" in err.value.reason


def _squad(path):
    para = lambda i: f"Paragraph {i} says that the capital of land {i} is city {i}. " * 3  # noqa
    data = {"data": [{"title": f"A{a}", "paragraphs": [
        {"context": para(a * 10 + p), "qas": [
            {"question": f"What is the capital of land {a * 10 + p}?", "is_impossible": False,
             "answers": [{"text": f"city {a * 10 + p}"}, {"text": f"City {a * 10 + p}"}]},
            {"question": "Unanswerable?", "is_impossible": True, "answers": []}]}
        for p in range(5)]} for a in range(8)]}
    path.write_text(json.dumps(data))
    return path


def _hotpot(path):
    data = [{"question": f"Who founded firm {q}?", "answer": f"founder {q}",
             "context": [[f"Firm {q}-{j}", [f"Firm {q}-{j} was founded by founder {q + j}. ",
                                            "It makes things."]] for j in range(10)]}
            for q in range(6)]
    path.write_text(json.dumps(data))
    return path


def test_qa_from_reference_files(tokenizer, tmp_path):
    squad = generate("qa_1", tokenizer, 2048, 3, qa_path=_squad(tmp_path / "squad.json"))
    for i, s in enumerate(squad):
        assert s["outputs"] == [f"city {i}", f"City {i}"]  # answerable questions, file order
        assert f"Question: What is the capital of land {i}?" in s["input"]
        assert s["input"].count("Document ") > 3 and "Document 1:\n" in s["input"]
        assert s["answer_prefix"] == " Answer:" and s["length"] <= 2048
    hotpot = generate("qa_2", tokenizer, 3072, 2, qa_path=_hotpot(tmp_path / "hotpot.json"))
    for i, s in enumerate(hotpot):
        assert s["outputs"] == [f"founder {i}"]
        assert all(f"Firm {i}-{j}\nFirm {i}-{j} was founded" in s["input"] for j in range(10))


def test_split_sentences_keeps_text():
    text = ("Mr. Smith went to Washington. He said: \"Yes!\" Then e.g. this one. "
            "The U.S. Army agreed? 2010 was a year. end")
    sents = split_sentences(text)
    assert " ".join(sents) == text
    assert sents[0] == "Mr. Smith went to Washington."
    assert sents[1] == 'He said: "Yes!"' and sents[2] == "Then e.g. this one."
    assert sents[3] == "The U.S. Army agreed?"
    assert sents[4] == "2010 was a year. end" and len(sents) == 5  # no break before lowercase


def test_string_match_all_and_part():
    preds = ["The numbers are 1234567 and 7654321.", "nothing here"]
    refs = [["1234567", "7654321", "1111111"], ["abc"]]
    assert string_match_all(preds, refs) == round((2 / 3 + 0) / 2 * 100, 2) == 33.33
    assert string_match_part(preds, refs) == 50.0  # any reference counts
    assert string_match_all(["PARIS is it"], [["paris"]]) == 100.0  # case-insensitive
    # SQuAD-style several annotator answers: one match is full credit for part, not for all
    assert string_match_part(["Denver Broncos"], [["Denver Broncos", "the Broncos team"]]) == 100.0
    assert string_match_all(["Denver Broncos"], [["Denver Broncos", "the Broncos team"]]) == 50.0
    with pytest.raises(ValueError):
        string_match_all([], [])


def test_postprocess_and_score_task():
    assert postprocess_pred("  a\x00b\x1fc \n") == "a\nb\nc"
    assert score_task("qa_1", [" Paris\x00"], [["paris", "Lyon"]]) == 100.0
    assert score_task("niah_multivalue", ["1 2"], [["1", "2", "3", "4"]]) == 50.0


def test_average_per_length_skips_tasks_not_run():
    scores = {8192: {"niah_single_1": 100.0, "cwe": 50.0, "qa_1": None, "qa_2": math.nan},
              4096: {"niah_single_1": 90.0, "vt": 70.0}}
    avg = average_per_length(scores)
    assert list(avg) == [4096, 8192]
    assert avg[8192].mean == 75.0 and avg[8192].num_tasks == 2
    assert avg[8192].not_run == ("qa_1", "qa_2")
    assert avg[4096].mean == 80.0 and avg[4096].num_tasks == 2 and avg[4096].not_run == ()
    assert math.isnan(average_per_length({4096: {"qa_1": None}})[4096].mean)


# ------------------------------------------------------------------ preset: official

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _ruler(preset="official", **params):
    from benchmarks.adapters import Ruler
    from harness.api import BenchmarkEntry

    if ESSAY.exists():
        params.setdefault("essay_path", str(ESSAY))
    return Ruler(BenchmarkEntry(name="ruler", preset=preset, params=params))


def test_official_splits_sentences_with_nltk():
    """RULER's sent_tokenize (punkt), not the regex, where the two disagree."""
    from benchmarks.ruler.common import nltk_sentences
    from benchmarks.ruler.niah import essay_context

    text = "He met Dr. No. It was fun. What?! really. OK then."
    assert nltk_sentences(text) == ["He met Dr. No.", "It was fun.", "What?!", "really.",
                                    "OK then."]
    assert split_sentences(text) != nltk_sentences(text)
    import random

    words = text.split(" ")
    ctx = essay_context(words, len(words), ["NEEDLE."], random.Random(1), nltk_sentences)
    before = ctx.split("NEEDLE.")[0].strip()
    # the needle sits at an nltk sentence boundary
    assert before == "" or any(before.endswith(s) for s in nltk_sentences(text))


def test_official_preset_chat_template_samples_and_tasks(tokenizer):
    import copy

    r = _ruler()
    assert r.tasks() == list(TASKS) and r.n_samples == 500     # RULER's 13 tasks, 500 samples
    assert _ruler(samples=3).n_samples == 3
    with pytest.raises(ValueError, match="runs RULER's 13 tasks; the entry leaves out"):
        from benchmarks.adapters import Ruler
        from harness.api import BenchmarkEntry
        Ruler(BenchmarkEntry(name="ruler", preset="official", tasks=["niah_single_1"]))

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHATML
    r = _ruler(samples=3)
    samples = r.samples("niah_single_1", 2048, chat, 99)
    assert len(samples) == 3                                  # params.samples, not n
    for s in samples:
        assert s.prompt.startswith("<|im_start|>user\n") and not s.add_special_tokens
        head, _, tail = s.prompt.partition("<|im_end|>\n<|im_start|>assistant\n")
        assert tail.startswith(" The special magic number for")         # the answer prefix
        assert s.references[0] in head
        assert _count(chat, s.prompt) + s.max_new_tokens <= 2048
    assert "chat template" in r.provenance()["template"]
    assert r.provenance()["sentence_split"].startswith("nltk")
    # no chat template: RULER's base template, the same prompts as the harness preset
    base_official = _ruler(samples=2).samples("niah_single_1", 2048, tokenizer, 2)
    harness = _ruler("harness").samples("niah_single_1", 2048, tokenizer, 2)
    assert [s.prompt for s in base_official] == [s.prompt for s in harness]
    assert all(s.add_special_tokens for s in base_official)
