"""Build CLIP-ITA without the Hub: a CLIP-format tokenizer trained on local text, a small CLIP config.

Real users start from a pretrained CLIP (`CLIPITAModel.from_clip("openai/clip-vit-base-patch32")`);
this is the default when no checkpoint can be downloaded, and what tests and the demo run on.
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPTextConfig, CLIPTokenizer

import custom_st
from clipita.fileio import write_atomic, write_json
from configuration_clipita import VARIANTS, CLIPITAConfig
from modeling_clipita import CLIPITAModel
from processing_clipita import CLIPITAProcessor

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


def _word_counts(texts: Iterable[str], template) -> Counter:
    """Words of `texts` as CLIP's normaliser and pre-tokeniser cut them (byte-level strings), counted."""
    counts: Counter = Counter()
    for text in texts:
        normalised = template.normalizer.normalize_str(text)
        counts.update(word for word, _ in template.pre_tokenizer.pre_tokenize_str(normalised))
    return counts


def learn_merges(
    word_counts: Mapping[str, int], max_new_tokens: int, min_frequency: int = 2
) -> list[tuple[str, str]]:
    """Byte-pair merges learnt from counted words, with "</w>" on each word's last symbol.

    The most frequent pair is merged first and ties go to the smallest pair of strings, so the result
    depends on the data only: not on hash order, the process, the thread count or the order of the words
    (the `tokenizers` trainer breaks ties by ids it hands out in hash-map order, which differs between
    processes). Stops at `max_new_tokens` new symbols or when no pair occurs `min_frequency` times.
    """
    words = [[*word[:-1], word[-1] + END_OF_WORD] for word in sorted(word_counts) if word]
    freq = [word_counts[word] for word in sorted(word_counts) if word]
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += freq[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    made: set[str] = set()
    while heap and len(made) < max_new_tokens:
        negative, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -negative:  # a stale entry: the pair's count changed since it was pushed
            continue
        if -negative < min_frequency:
            break
        merges.append(pair)
        made.add(pair[0] + pair[1])
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            old = words[i]
            new, j = [], 0
            while j < len(old):
                if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
                    new.append(pair[0] + pair[1])
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            for p in zip(old, old[1:]):
                pairs[p] -= freq[i]
                changed.add(p)
            for p in zip(new, new[1:]):
                pairs[p] += freq[i]
                where.setdefault(p, set()).add(i)
                changed.add(p)
            words[i] = new
        pairs.pop(pair, None)
        for p in sorted(changed):
            if pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
            else:
                pairs.pop(p, None)
    return merges


def train_clip_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, model_max_length: int | None = None
) -> CLIPTokenizer:
    """Byte-level BPE with CLIP's normaliser, pre-tokeniser and "</w>" word ends, returned as a
    `CLIPTokenizer` so that the same processor serves it and the openai/clip-* tokenizers.

    The same texts give the same tokenizer, byte for byte, in every process, run and thread count
    (`learn_merges` breaks ties by the pairs' strings). `model_max_length` (the processor truncates to it)
    defaults to the text positions of a CLIP text config, so that texts always fit the text tower.
    """
    if model_max_length is None:
        model_max_length = CLIPTextConfig().max_position_embeddings
    template = CLIPTokenizer()._tokenizer  # CLIP's pipeline, empty vocabulary
    counts = _word_counts(texts, template)
    # CLIP keeps both forms of every byte (with and without the "</w>" word end) in its vocabulary.
    symbols = {form for s in pre_tokenizers.ByteLevel.alphabet() for form in (s, s + END_OF_WORD)}
    merges = learn_merges(counts, max_new_tokens=vocab_size - 2 - len(symbols))
    merged = list(dict.fromkeys(a + b for a, b in merges))
    order = [BOS, EOS, *sorted(symbols - set(merged)), *merged]
    vocab = {token: i for i, token in enumerate(order)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def small_clip_config(
    tokenizer: CLIPTokenizer, image_size: int = 64, hidden_size: int = 128, layers: int = 3
) -> CLIPConfig:
    """A CLIP small enough to train from scratch on a CPU; its text positions match the tokenizer's."""
    heads = max(1, hidden_size // 32)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=max(4, image_size // 8),
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden_size)


def image_processor_for(image_size: int) -> CLIPImageProcessorPil:
    """The PIL backend: identical pixels with or without torchvision installed."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def build_default_model(
    texts: Iterable[str],
    variant: str = "clip-ita",
    seed: int = 0,
    image_size: int = 64,
    hidden_size: int = 128,
    layers: int = 3,
    vocab_size: int = 4096,
    tokenizer: CLIPTokenizer | None = None,
    **config_overrides,
) -> tuple[CLIPITAModel, CLIPITAProcessor]:
    """A from-scratch CLIP-ITA and its processor; `texts` (titles, attributes, category names) train the
    tokenizer, unless one is given (a resumed run's, or the one the main process built)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if tokenizer is None:
        tokenizer = train_clip_tokenizer(texts, vocab_size=vocab_size)
    processor = CLIPITAProcessor(image_processor_for(image_size), tokenizer)
    config_overrides.setdefault("projection_dim", hidden_size)
    config = CLIPITAConfig(
        clip_config=small_clip_config(tokenizer, image_size, hidden_size, layers),
        product_modalities=VARIANTS[variant],
        **config_overrides,
    )
    torch.manual_seed(seed)
    return CLIPITAModel(config), processor


def register_auto_classes() -> None:
    """Make save_pretrained write auto_map and copy the model files, so folders load as remote code.

    Call it before writing a folder; importing this module registers nothing.
    """
    CLIPITAConfig.register_for_auto_class()
    CLIPITAModel.register_for_auto_class("AutoModel")
    CLIPITAProcessor.register_for_auto_class("AutoProcessor")


# sentence-transformers reads these from the folder: one module, the whole model (custom_st.py).
SENTENCE_TRANSFORMERS_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": f"custom_st.{custom_st.CLIPITASentenceTransformer.__name__}"}
]
SENTENCE_TRANSFORMERS_CONFIG = {
    "model_type": "SentenceTransformer",
    "prompts": {},
    "default_prompt_name": None,
    "similarity_fn_name": "cosine",
}


def add_sentence_transformers_files(folder: str | os.PathLike) -> None:
    """Make a model folder load with `SentenceTransformer(folder, trust_remote_code=True)` too:
    custom_st.py (remote code), modules.json and config_sentence_transformers.json."""
    folder = Path(folder)
    write_atomic(folder / "custom_st.py", lambda tmp: shutil.copyfile(custom_st.__file__, tmp))
    write_atomic(
        folder / "modules.json",
        lambda tmp: tmp.write_text(
            json.dumps(SENTENCE_TRANSFORMERS_MODULES, indent=2) + "\n", encoding="utf-8"
        ),
    )
    write_json(folder / "config_sentence_transformers.json", SENTENCE_TRANSFORMERS_CONFIG)
