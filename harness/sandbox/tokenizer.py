"""A byte-level BPE tokenizer trained on the sandbox corpus with Qwen2's exact pipeline.

transformers 5.x always loads ``Qwen2Tokenizer`` for model type ``qwen2`` and installs Qwen2's
own normalizer and pre-tokenizer (NFC; ``Split`` on the Qwen2 regex, isolated; ``ByteLevel``
without regex). A tokenizer trained with any other pipeline would tokenize differently after
reload, silently (DESIGN §4). So we train with exactly that pipeline, copied from
``transformers/models/qwen2/tokenization_qwen2.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

# Qwen2's pre-tokenization regex (transformers tokenization_qwen2.PRETOKENIZE_REGEX, verbatim).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
EOS = "<|endoftext|>"


def qwen2_pipeline_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path,
                    model_max_length: int) -> Path:
    """Train on ``texts`` and save a ``Qwen2Tokenizer`` folder that round-trips on reload."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = qwen2_pipeline_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   unk_token=EOS, model_max_length=model_max_length)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # Declare the class transformers will use for a qwen2 model anyway.
    import json
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["add_prefix_space"] = False
    cfg["errors"] = "replace"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir
