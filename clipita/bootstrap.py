"""Build CLIP-ITA without the Hub: a CLIP-format tokenizer trained on local text, a small CLIP config.

Real users start from a pretrained CLIP (`CLIPITAModel.from_clip("openai/clip-vit-base-patch32")`);
this is the default when no checkpoint can be downloaded, and what tests and the demo run on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPTextConfig, CLIPTokenizer

from configuration_clipita import VARIANTS, CLIPITAConfig
from modeling_clipita import CLIPITAModel
from processing_clipita import CLIPITAProcessor

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_clip_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, model_max_length: int | None = None
) -> CLIPTokenizer:
    """Train byte-level BPE with CLIP's normaliser, pre-tokeniser and "</w>" word ends, returned as a
    `CLIPTokenizer` so that the same processor serves it and the openai/clip-* tokenizers.

    `model_max_length` (the processor truncates to it) defaults to the text positions of a CLIP text
    config, so that texts always fit the text tower.
    """
    if model_max_length is None:
        model_max_length = CLIPTextConfig().max_position_embeddings
    template = CLIPTokenizer()._tokenizer  # CLIP's pipeline, empty vocabulary
    tokenizer = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS))
    tokenizer.normalizer = template.normalizer
    tokenizer.pre_tokenizer = template.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        for m in json.loads(tokenizer.to_str())["model"]["merges"]
    ]
    # CLIP keeps both forms of every byte (with and without the "</w>" word end) in its vocabulary.
    symbols = set(tokenizer.get_vocab()) - {BOS, EOS}
    symbols |= {form for s in pre_tokenizers.ByteLevel.alphabet() for form in (s, s + "</w>")}
    # The trainer numbers tokens in a hash order that changes from process to process; number them
    # canonically (specials, single symbols sorted, then merges in order) so that the same texts always
    # give the same ids: runs are reproducible and a resumed or multi-process run sees one vocabulary.
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
    **config_overrides,
) -> tuple[CLIPITAModel, CLIPITAProcessor]:
    """A from-scratch CLIP-ITA and its processor; `texts` (titles, attributes, category names) train the tokenizer."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
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
