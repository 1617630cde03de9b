"""CLIP-ITA: category-to-image retrieval for e-commerce (Hendriksen et al., ECIR 2022).

A product is the fusion of its image, title and attributes; a category is its encoded name. Both go
through CLIP's towers, then through MLP heads into one space, trained with a bidirectional
contrastive loss. This file ships to the Hub as remote code: it imports only torch, transformers
and its sibling configuration file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple

try:  # as Hub remote code (a package) or from a checkout (top-level modules)
    from .configuration_clipita import CLIPITAConfig
except ImportError:
    from configuration_clipita import CLIPITAConfig

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class CLIPITAOutput(ModelOutput):
    r"""What [`CLIPITAModel.forward`] returns.

    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss` is `True`):
        Bidirectional contrastive loss between category j and product j of the batch.
    logits_per_category (`torch.FloatTensor` of shape `(num_categories, num_products)`):
        Scaled cosine similarities between `category_embeds` and `product_embeds`.
    logits_per_product (`torch.FloatTensor` of shape `(num_products, num_categories)`):
        The transpose of `logits_per_category`.
    category_embeds (`torch.FloatTensor` of shape `(num_categories, projection_dim)`):
        L2-normalised output of the category head.
    product_embeds (`torch.FloatTensor` of shape `(num_products, projection_dim)`):
        L2-normalised output of the product head.
    image_embeds (`torch.FloatTensor` of shape `(num_products, clip_projection_dim)`, *optional*):
        CLIP's projected image embedding, an input of the product head (when the model uses images).
    title_embeds (`torch.FloatTensor` of shape `(num_products, clip_projection_dim)`, *optional*):
        CLIP's projected title embedding, an input of the product head (when the model uses titles).
    attribute_embeds (`torch.FloatTensor` of shape `(num_products, clip_projection_dim)`, *optional*):
        The pooled attribute tower output, an input of the product head (when the model uses attributes).
    vision_model_output (`BaseModelOutputWithPooling`, *optional*):
        CLIP's vision tower on the images (`pooler_output` projected), with the hidden states and
        attentions asked for. In every `*_model_output`, `last_hidden_state` is None unless per-token
        outputs are asked for (`config.pooled_last_layer` runs the last layer at the pooled token only).
    title_model_output (`BaseModelOutputWithPooling`, *optional*):
        CLIP's text tower on the titles (`pooler_output` projected).
    attribute_model_output (`BaseModelOutputWithPooling`, *optional*):
        CLIP's text tower on the products' attributes, flattened in (product, attribute) order and
        without the padding attributes (`pooler_output` projected); None when no product has any.
    category_model_output (`BaseModelOutputWithPooling`):
        CLIP's text tower on the category names (`pooler_output` projected).
    """

    loss: torch.FloatTensor | None = None
    logits_per_category: torch.FloatTensor | None = None
    logits_per_product: torch.FloatTensor | None = None
    category_embeds: torch.FloatTensor | None = None
    product_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    title_embeds: torch.FloatTensor | None = None
    attribute_embeds: torch.FloatTensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    title_model_output: BaseModelOutputWithPooling | None = None
    attribute_model_output: BaseModelOutputWithPooling | None = None
    category_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def clipita_contrastive_loss(
    category_embeds: torch.Tensor,
    product_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    loss_lambda: float = 0.5,
    category_ids: torch.Tensor | None = None,
    path_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional InfoNCE between aligned pairs (category_j, product_j) of a batch.

    L = mean_j [ lambda * l(p->c)_j + (1 - lambda) * l(c->p)_j ] (paper, eq. 3-5). With `category_ids`,
    the multi-positive variant: pairs k != j with the same category are removed from the
    denominators, so a product is never pushed away from its own category because another product
    of that category shares the batch. With `path_ids` too (`[B, D]`, the ids of each product's path
    nodes, padded with -1), pairs k != j where category j lies on product k's path are removed: a product
    is not a negative of its ancestors either, and a broad category is contrasted with the products
    outside it, not with its own. Features may be gathered from several processes first.
    """
    logits = logit_scale * category_embeds @ product_embeds.t()  # [B, B]: category j vs product k
    if category_ids is not None:
        if path_ids is None:
            positive = category_ids[:, None] == category_ids[None, :]
        else:
            positive = (category_ids[:, None, None] == path_ids[None, :, :]).any(dim=-1)
        positive.fill_diagonal_(False)
        logits = logits.masked_fill(positive, torch.finfo(logits.dtype).min)
    targets = torch.arange(logits.shape[0], device=logits.device)
    loss_category_to_product = F.cross_entropy(logits, targets)
    loss_product_to_category = F.cross_entropy(logits.t(), targets)
    return loss_lambda * loss_product_to_category + (1.0 - loss_lambda) * loss_category_to_product


def _length_buckets(lengths: torch.Tensor, call_cost: int) -> list[tuple[torch.Tensor, int]]:
    """Rows grouped by length, as `(row indices, longest length)` buckets, minimising the padded tokens
    encoded plus `call_cost` per bucket (a tower call): an exact dynamic programme over the sorted distinct
    lengths, which are few (at most the tokenizer's `model_max_length`)."""
    values, counts = torch.unique(lengths, return_counts=True)
    values, counts = values.tolist(), counts.tolist()
    best = [0] + [math.inf] * len(values)  # best[j]: cost of the j shortest distinct lengths
    start = [0] * (len(values) + 1)
    for j in range(1, len(values) + 1):
        rows = 0
        for i in range(j, 0, -1):  # the last bucket holds distinct lengths i-1 .. j-1
            rows += counts[i - 1]
            cost = best[i - 1] + rows * values[j - 1] + call_cost
            if cost < best[j]:
                best[j], start[j] = cost, i - 1
    buckets, j = [], len(values)
    while j > 0:
        low, high = values[start[j]], values[j - 1]
        rows = torch.nonzero((lengths >= low) & (lengths <= high)).squeeze(1)
        buckets.append((rows, high))
        j = start[j]
    return buckets[::-1]


class CLIPITAHead(nn.Module):
    """MLP head (paper: 2 hidden layers, each Linear -> LayerNorm -> GELU) into the shared space."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_hidden_layers: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_states)


class CLIPITAAttributePooler(nn.Module):
    """Pools a product's 0..N attribute embeddings into one vector.

    `mean` is the paper's h_a = mean_i f_a(a_i); `attention` lets a learned query weigh the
    attributes (the paper's future work). A product without attributes gets a learned
    "no attributes" embedding instead of a division by zero.
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        self.empty_embedding = nn.Parameter(torch.zeros(dim))
        if mode == "attention":
            self.query = nn.Parameter(torch.zeros(dim))
            self.key = nn.Linear(dim, dim)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(embeds.dtype)  # [B, A]
        count = mask.sum(dim=1, keepdim=True)  # [B, 1]
        if self.mode == "mean":
            weights = mask / count.clamp(min=1.0)
        else:
            scores = self.key(embeds) @ self.query / math.sqrt(embeds.shape[-1])  # [B, A]
            scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=1) * mask
        pooled = (weights.unsqueeze(-1) * embeds).sum(dim=1)
        has_attributes = count > 0
        return torch.where(has_attributes, pooled, self.empty_embedding.to(pooled.dtype).expand_as(pooled))


def _truncate(embeds: torch.Tensor, dim: int) -> torch.Tensor:
    """The first `dim` dimensions, L2-normalised: a Matryoshka embedding cut to a nested size."""
    return F.normalize(embeds[..., :dim], dim=-1)


def _restore_position_ids(model: nn.Module, incompatible_keys) -> None:
    """CLIP's `position_ids` buffers are not saved; after `to_empty` (a model built on the meta device)
    they hold garbage that `load_state_dict` does not overwrite, so recompute them from their shape."""
    with torch.no_grad():
        for module in model.modules():
            if "position_ids" in getattr(module, "_non_persistent_buffers_set", ()):
                ids = module.position_ids
                if not ids.is_meta:
                    ids.copy_(torch.arange(ids.shape[-1], device=ids.device).expand_as(ids))


def _pooled_text_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The token CLIP's text tower pools, as transformers' `CLIPTextTransformer` picks it: the highest id
    for configs from before its eos fix (`eos_token_id == 2`), else the first end token."""
    ids = input_ids.to(torch.int)
    if eos_token_id == 2:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


def _text_attention_mask(attention_mask: torch.Tensor | None, hidden_states: torch.Tensor) -> torch.Tensor:
    """The text tower's additive `(batch_size or 1, 1, tokens, tokens)` mask: causal, padding keys hidden;
    large negative rather than -inf, as transformers' masks, so a row with no visible key stays finite."""
    length = hidden_states.shape[1]
    keep = torch.ones(length, length, dtype=torch.bool, device=hidden_states.device).tril()[None, None]
    if attention_mask is not None:
        keep = keep & attention_mask.bool()[:, None, None, :]
    mask = torch.zeros(keep.shape, dtype=hidden_states.dtype, device=hidden_states.device)
    return mask.masked_fill(~keep, torch.finfo(hidden_states.dtype).min)


def _pooled_token_layer(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    positions: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """A CLIP encoder layer's output at one token per row, `(batch_size, hidden_size)`.

    Keys and values still come from every token (those `attention_mask`, additive `(batch_size or 1, 1,
    tokens, tokens)`, lets `positions[b]` see); the query, attention output, residual and MLP run for that
    one token. Same maths as the layer on every token (transformers' `CLIPEncoderLayer`), read at
    `positions`.
    """
    attention = layer.self_attn
    batch, length, width = hidden_states.shape
    rows = torch.arange(batch, device=hidden_states.device)
    normed = layer.layer_norm1(hidden_states)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, attention.num_heads, attention.head_dim).transpose(1, 2)

    query = heads(attention.q_proj(normed[rows, positions][:, None]))
    keys, values = heads(attention.k_proj(normed)), heads(attention.v_proj(normed))
    mask = None
    if attention_mask is not None:  # the pooled token's row of the mask: (batch_size, 1, 1, tokens)
        mask = attention_mask.expand(batch, 1, length, length)[rows, :, positions][:, None]
    attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=attention.scale)
    hidden = hidden_states[rows, positions] + attention.out_proj(
        attended.transpose(1, 2).reshape(batch, width)
    )
    return hidden + layer.mlp(layer.layer_norm2(hidden))


class CLIPITAPreTrainedModel(PreTrainedModel):
    config_class = CLIPITAConfig
    base_model_prefix = "clipita"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]

    def _init_weights(self, module):
        """Heads and attribute tower; the wrapped CLIPModel initialises its own weights.

        Every parameter created here is set here too, so that a model built on the meta device
        (or loaded lazily) gets the same values as one built in place.
        """
        super()._init_weights(module)
        if isinstance(module, CLIPITAAttributePooler):
            init.zeros_(module.empty_embedding)
            if module.mode == "attention":
                init.normal_(module.query, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, CLIPITAModel):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.contrastive_temperature))


class CLIPITAModel(CLIPITAPreTrainedModel):
    """CLIPModel + attribute tower + product and category heads.

    image -> CLIP vision tower + visual projection; title -> CLIP text tower + text projection;
    each "key: value" attribute -> the same text tower + text projection + f_a, pooled per product;
    product = g_p([image; title; attributes]) for the configured modalities; category = g_c(text(name)).

    Method names follow transformers' CLIPModel: `get_image_features` / `get_text_features` return CLIP's
    output objects (projected, not normalised `pooler_output`); CLIP-ITA's own embeddings come from
    `get_category_features` / `get_product_features`, L2-normalised like `forward`'s.
    """

    def __init__(self, config: CLIPITAConfig):
        super().__init__(config)
        self.clip = CLIPModel(config.clip_config)
        clip_dim = config.clip_config.projection_dim
        if "attributes" in config.product_modalities:
            self.attribute_projection = nn.Sequential(nn.Linear(clip_dim, clip_dim), nn.GELU())
            self.attribute_pooler = CLIPITAAttributePooler(clip_dim, config.attribute_pooling)
        head = (
            config.head_hidden_dim,
            config.projection_dim,
            config.head_num_hidden_layers,
            config.head_dropout,
        )
        self.product_head = CLIPITAHead(clip_dim * len(config.product_modalities), *head)
        self.category_head = CLIPITAHead(clip_dim, *head)
        # Our temperature (CLIP's own logit_scale is unused). A fixed one is a buffer, not a frozen
        # parameter: loading re-creates parameters as trainable, and would make it learnable again.
        logit_scale = torch.tensor(math.log(1.0 / config.contrastive_temperature))
        if config.learnable_temperature:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)
        self.processor = None
        self.post_init()
        self.register_load_state_dict_post_hook(_restore_position_ids)

    @classmethod
    def from_clip(cls, pretrained_model_name_or_path, **config_overrides) -> CLIPITAModel:
        """Start from any Hugging Face CLIP checkpoint (e.g. openai/clip-vit-base-patch32): towers
        and projections are copied exactly; attribute tower and heads are new."""
        clip_kwargs = {
            k: config_overrides.pop(k)
            for k in ("revision", "cache_dir", "local_files_only", "token")
            if k in config_overrides
        }
        clip = CLIPModel.from_pretrained(pretrained_model_name_or_path, **clip_kwargs)
        config_overrides.setdefault("projection_dim", clip.config.projection_dim)
        config = CLIPITAConfig(clip_config=clip.config.to_dict(), **config_overrides)
        config.base_clip_model = str(pretrained_model_name_or_path)
        model = cls(config)
        model.clip.load_state_dict(clip.state_dict())
        return model

    # ----- CLIP's own features, as transformers' CLIPModel returns them -----

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        r"""CLIP's vision tower; `pooler_output` (`(batch_size, clip_projection_dim)`) is the projected,
        not normalised, image embedding, as in transformers' `CLIPModel.get_image_features`."""
        return self.clip.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        r"""CLIP's text tower; `pooler_output` (`(batch_size, clip_projection_dim)`) is the projected,
        not normalised, text embedding, as in transformers' `CLIPModel.get_text_features`."""
        return self.clip.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )

    # ----- the towers as CLIP-ITA reads them: pooled outputs only -----

    def _image_tower(
        self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """`get_image_features` as CLIP-ITA reads it (`pooler_output`), the last layer run for the class
        token only (`config.pooled_last_layer`); `last_hidden_state` is then None. Per-token outputs and
        other options go through the whole tower."""
        vision_config = self.config.clip_config.vision_config
        if not self._pools_last_layer(vision_config, kwargs):
            return self.get_image_features(pixel_values, return_dict=True, **kwargs)
        vision = self.clip.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        *layers, last = vision.encoder.layers
        for layer in layers:
            hidden = layer(hidden, None)
        class_token = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
        pooled = vision.post_layernorm(_pooled_token_layer(last, hidden, class_token, None))
        return BaseModelOutputWithPooling(pooler_output=self.clip.visual_projection(pooled))

    def _text_tower(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """`get_text_features` as CLIP-ITA reads it (`pooler_output`), the last layer run for the pooled
        (end) token only (`config.pooled_last_layer`), as `_image_tower`: the earlier layers get the causal
        and padding mask built here, the same one transformers' `CLIPTextTransformer` builds."""
        text_config = self.config.clip_config.text_config
        if not self._pools_last_layer(text_config, kwargs):
            return self.get_text_features(input_ids, attention_mask, return_dict=True, **kwargs)
        text = self.clip.text_model
        hidden = text.embeddings(input_ids=input_ids)
        mask = _text_attention_mask(attention_mask, hidden)  # additive: eager and sdpa attention read it
        *layers, last = text.encoder.layers
        for layer in layers:
            hidden = layer(hidden, mask)
        positions = _pooled_text_positions(input_ids, text.eos_token_id)
        pooled = text.final_layer_norm(_pooled_token_layer(last, hidden, positions, mask))
        return BaseModelOutputWithPooling(pooler_output=self.clip.text_projection(pooled))

    def _pools_last_layer(self, tower_config, kwargs: dict) -> bool:
        """The last-layer cut applies: configured on, no per-token output or other option asked for, no
        dropout drawn (the cut layer draws none), and an attention whose masks the earlier layers get from
        here (eager, sdpa)."""
        return (
            self.config.pooled_last_layer
            and not any(value is not None and value is not False for value in kwargs.values())
            and not self._draws_dropout(tower_config)
            and getattr(tower_config, "_attn_implementation", None) in (None, "eager", "sdpa")
        )

    def _unique_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """`get_text_features` run once per distinct (ids, mask) row, in length buckets, scattered back.

        Category names and attribute strings repeat inside a batch (pairs share a node, many products are
        "colour: red"), and short texts padded to a batch's longest mostly encode padding. A row's output
        does not depend on the other rows nor on padding after it (causal attention, right padding), so the
        distinct rows go through the tower in groups of similar length, each cut to its longest, and the
        outputs and gradients are those of encoding every row (duplicates' gradients sum through the
        scatter; `last_hidden_state` is zero past a bucket's length, where every row is padding). Off with
        `config.deduplicate_texts=False`, and while the text tower draws dropout masks in training (a
        duplicate would share its copy's mask).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self._deduplicates_texts():
            return self._text_tower(input_ids, attention_mask, **kwargs)
        length = input_ids.shape[1]
        rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        ids, mask = unique[:, :length], unique[:, length:]
        lengths = mask.sum(dim=-1)
        right_padded = torch.equal(mask.bool(), torch.arange(length, device=mask.device) < lengths[:, None])
        per_token = kwargs.get("output_attentions") or kwargs.get("output_hidden_states")
        if not right_padded or per_token or not bool((lengths > 0).all()):
            if unique.shape[0] == rows.shape[0]:
                return self._text_tower(input_ids, attention_mask, **kwargs)
            text = self._text_tower(ids, mask, **kwargs)
            return BaseModelOutputWithPooling(
                **{
                    key: tuple(t[inverse] for t in value) if isinstance(value, tuple) else value[inverse]
                    for key, value in text.items()
                }
            )
        order, pooled, hidden = [], [], []
        for rows_of_bucket, bucket_length in _length_buckets(lengths, self._text_call_cost()):
            text = self._text_tower(
                ids[rows_of_bucket, :bucket_length], mask[rows_of_bucket, :bucket_length], **kwargs
            )
            order.append(rows_of_bucket)
            pooled.append(text.pooler_output)
            # None from a tower that kept no per-token states (pooled last layer, a feature cache)
            state = text.last_hidden_state
            hidden.append(None if state is None else F.pad(state, (0, 0, 0, length - bucket_length)))
        # row r of the input is unique row inverse[r], at position `where[inverse[r]]` of the buckets' outputs
        order = torch.cat(order)
        where = torch.empty_like(order)
        where[order] = torch.arange(order.shape[0], device=order.device)
        gather = where[inverse]
        return BaseModelOutputWithPooling(
            last_hidden_state=None if any(h is None for h in hidden) else torch.cat(hidden)[gather],
            pooler_output=torch.cat(pooled)[gather],
        )

    def _deduplicates_texts(self) -> bool:
        """Configured on, and no dropout drawn in the text tower (a duplicate would share its copy's mask)."""
        return self.config.deduplicate_texts and not self._draws_dropout(self.config.clip_config.text_config)

    def _draws_dropout(self, tower_config) -> bool:
        """The tower draws random attention masks in this call (training, attention_dropout > 0)."""
        return self.training and tower_config.attention_dropout > 0

    def _text_call_cost(self) -> int:
        """What one more text-tower call costs, in padded tokens: on a CPU a call's fixed work is worth a few
        dozen tokens; an accelerator runs padding nearly free next to a call's kernel launches."""
        return 64 if self.device.type == "cpu" else 4096

    # ----- CLIP-ITA features: L2-normalised tensors in the shared space -----

    def get_category_features(
        self, category_input_ids: torch.Tensor, category_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Category name -> text tower -> category head, L2-normalised `(num_categories, projection_dim)`."""
        text = self._unique_text_features(category_input_ids, category_attention_mask)
        return self._category_head(text.pooler_output)

    def _category_head(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.category_head(text_embeds), dim=-1)

    def encode_attributes(
        self,
        attribute_input_ids: torch.Tensor,
        attribute_attention_mask: torch.Tensor | None = None,
        attribute_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`[B, A, L]` tokenised "key: value" strings -> pooled `[B, clip_dim]` attribute embedding.

        Only real attributes go through the text tower; `attribute_mask` `[B, A]` marks them
        (derived from the attention mask when absent).
        """
        return self._encode_attributes(attribute_input_ids, attribute_attention_mask, attribute_mask)[0]

    def _encode_attributes(
        self,
        attribute_input_ids: torch.Tensor,
        attribute_attention_mask: torch.Tensor | None,
        attribute_mask: torch.Tensor | None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling | None]:
        rows, attribute_mask = self._attribute_rows(
            attribute_input_ids, attribute_attention_mask, attribute_mask
        )
        text = None if rows is None else self._text_groups({"attributes": rows}, **kwargs)["attributes"]
        return self._pool_attributes(text, attribute_mask), text

    def _attribute_rows(
        self,
        attribute_input_ids: torch.Tensor,
        attribute_attention_mask: torch.Tensor | None,
        attribute_mask: torch.Tensor | None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
        """The real attributes' `(ids, mask)` rows in (product, attribute) order (None when there are none),
        cut to the longest; and the boolean `[B, A]` attribute mask."""
        if attribute_input_ids.dim() != 3:
            raise ValueError(
                f"attribute_input_ids must be [batch, attributes, tokens], got {tuple(attribute_input_ids.shape)}"
            )
        if attribute_attention_mask is None:
            attribute_attention_mask = torch.ones_like(attribute_input_ids)
        if attribute_mask is None:
            attribute_mask = attribute_attention_mask.any(dim=-1)
        attribute_mask = attribute_mask.bool()
        if not attribute_mask.any():
            return None, attribute_mask
        flat_ids = attribute_input_ids[attribute_mask]
        flat_mask = attribute_attention_mask[attribute_mask]
        length = int(flat_mask.sum(dim=-1).max())  # drop padding columns no attribute uses
        return (flat_ids[:, :length], flat_mask[:, :length]), attribute_mask

    def _pool_attributes(
        self, text: BaseModelOutputWithPooling | None, attribute_mask: torch.Tensor
    ) -> torch.Tensor:
        """Text tower outputs of the real attributes -> f_a -> pooled `[B, clip_dim]`."""
        clip_dim = self.config.clip_config.projection_dim
        embeds = self.logit_scale.new_zeros(*attribute_mask.shape, clip_dim, dtype=self.dtype)
        if text is not None:
            features = self.attribute_projection(text.pooler_output)
            embeds = embeds.masked_scatter(attribute_mask.unsqueeze(-1), features.to(embeds.dtype))
        return self.attribute_pooler(embeds, attribute_mask)

    def _text_groups(
        self,
        groups: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
        **kwargs: Unpack[TransformersKwargs],
    ) -> dict[str, BaseModelOutputWithPooling]:
        """The text tower on several groups of rows (titles, attribute strings, category names) as one set:
        their distinct rows once, in length buckets (`_unique_text_features`); each group gets its rows'
        outputs back, at its own width. Without deduplication, one call per group."""
        if len(groups) < 2 or not self._deduplicates_texts():
            return {
                name: self._unique_text_features(ids, mask, **kwargs) for name, (ids, mask) in groups.items()
            }
        width = max(ids.shape[1] for ids, _ in groups.values())
        pad = self.config.clip_config.text_config.pad_token_id or 0
        ids = torch.cat([F.pad(ids, (0, width - ids.shape[1]), value=pad) for ids, _ in groups.values()])
        mask = torch.cat(
            [
                F.pad(torch.ones_like(i) if m is None else m, (0, width - i.shape[1]), value=0)
                for i, m in groups.values()
            ]
        )
        text = self._unique_text_features(ids, mask, **kwargs)
        sizes = [i.shape[0] for i, _ in groups.values()]

        def part(key: str, tensor: torch.Tensor, index: int, length: int) -> torch.Tensor:
            piece = tensor.split(sizes)[index]
            if key == "pooler_output":
                return piece
            if key == "attentions":  # [rows, heads, tokens, tokens]
                return piece[..., :length, :length]
            return piece[:, :length]  # [rows, tokens, hidden]

        outputs = {}
        for index, (name, (group_ids, _)) in enumerate(groups.items()):
            length = group_ids.shape[1]
            outputs[name] = BaseModelOutputWithPooling(
                **{
                    key: tuple(part(key, t, index, length) for t in value)
                    if isinstance(value, tuple)
                    else part(key, value, index, length)
                    for key, value in text.items()
                }
            )
        return outputs

    def _product_towers(
        self,
        pixel_values: torch.Tensor | None,
        title_input_ids: torch.Tensor | None,
        title_attention_mask: torch.Tensor | None,
        attribute_input_ids: torch.Tensor | None,
        attribute_attention_mask: torch.Tensor | None,
        attribute_mask: torch.Tensor | None,
        category_input_ids: torch.Tensor | None = None,
        category_attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[dict[str, torch.Tensor], dict[str, BaseModelOutputWithPooling | None]]:
        """Each configured modality's input to the product head, and the tower outputs behind them; with
        category ids, the category names' text tower output too (`towers["category"]`), from the same
        text-tower pass as the titles and attributes."""
        given = {"image": pixel_values, "title": title_input_ids, "attributes": attribute_input_ids}
        argument = {"image": "pixel_values", "title": "title_input_ids", "attributes": "attribute_input_ids"}
        modalities = self.config.product_modalities
        missing = [m for m in modalities if given[m] is None]
        if missing:
            raise ValueError(
                f"this CLIP-ITA model ({self.config.variant or modalities}) builds products from "
                f"{modalities}, but the call lacks {', '.join(missing)} "
                f"(argument {', '.join(argument[m] for m in missing)})"
            )
        embeds, towers, texts = {}, {}, {}
        if "image" in modalities:
            towers["image"] = self._image_tower(pixel_values, **kwargs)
            embeds["image"] = towers["image"].pooler_output
        if "title" in modalities:
            texts["title"] = (title_input_ids, title_attention_mask)
        if "attributes" in modalities:
            rows, attribute_mask = self._attribute_rows(
                attribute_input_ids, attribute_attention_mask, attribute_mask
            )
            if rows is not None:
                texts["attributes"] = rows
        if category_input_ids is not None:
            texts["category"] = (category_input_ids, category_attention_mask)
        towers.update(self._text_groups(texts, **kwargs))
        if "title" in modalities:
            embeds["title"] = towers["title"].pooler_output
        if "attributes" in modalities:
            towers.setdefault("attributes", None)
            embeds["attributes"] = self._pool_attributes(towers["attributes"], attribute_mask)
        return embeds, towers

    def get_product_features(
        self,
        pixel_values: torch.Tensor | None = None,
        title_input_ids: torch.Tensor | None = None,
        title_attention_mask: torch.Tensor | None = None,
        attribute_input_ids: torch.Tensor | None = None,
        attribute_attention_mask: torch.Tensor | None = None,
        attribute_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Product (image, title, attributes, as configured) -> product head, L2-normalised
        `(num_products, projection_dim)`."""
        embeds, _ = self._product_towers(
            pixel_values,
            title_input_ids,
            title_attention_mask,
            attribute_input_ids,
            attribute_attention_mask,
            attribute_mask,
        )
        return self._fuse(embeds)

    def _fuse(self, modality_embeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """g_p([h_image; h_title; h_attributes]), L2-normalised."""
        return F.normalize(self.product_head(torch.cat(list(modality_embeds.values()), dim=-1)), dim=-1)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        title_input_ids: torch.Tensor | None = None,
        title_attention_mask: torch.Tensor | None = None,
        attribute_input_ids: torch.Tensor | None = None,
        attribute_attention_mask: torch.Tensor | None = None,
        attribute_mask: torch.Tensor | None = None,
        category_input_ids: torch.Tensor | None = None,
        category_attention_mask: torch.Tensor | None = None,
        category_ids: torch.Tensor | None = None,
        path_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | CLIPITAOutput:
        r"""Encode products and categories; with `return_loss`, pair product j with category j.

        category_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*): integer id of each pair's
            category; used by the `multi_positive` loss so that same-category pairs are not negatives.
        path_ids (`torch.LongTensor` of shape `(batch_size, depth)`, *optional*): ids (as `category_ids`)
            of the nodes on each product's path, padded with -1; used by the `path_positive` loss.
        return_loss (`bool`, *optional*): whether to return the contrastive loss.
        kwargs: transformers' keyword arguments (`output_attentions`, `output_hidden_states`, ...), passed
            on to every CLIP tower call; their results are in the `*_model_output` fields.
        """
        if category_input_ids is None:
            raise ValueError("forward needs category_input_ids (the encoded category names)")
        modality, towers = self._product_towers(
            pixel_values,
            title_input_ids,
            title_attention_mask,
            attribute_input_ids,
            attribute_attention_mask,
            attribute_mask,
            category_input_ids,
            category_attention_mask,
            **kwargs,
        )
        product_embeds = self._fuse(modality)
        category_output = towers.pop("category")
        category_embeds = self._category_head(category_output.pooler_output)
        logit_scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        logits_per_category = logit_scale * category_embeds @ product_embeds.t()

        loss = None
        if return_loss:
            if category_embeds.shape[0] != product_embeds.shape[0]:
                raise ValueError(
                    f"return_loss pairs category j with product j, got {category_embeds.shape[0]} categories "
                    f"and {product_embeds.shape[0]} products"
                )
            loss = self.contrastive_loss(category_embeds, product_embeds, category_ids, path_ids)
        return CLIPITAOutput(
            loss=loss,
            logits_per_category=logits_per_category,
            logits_per_product=logits_per_category.t(),
            category_embeds=category_embeds,
            product_embeds=product_embeds,
            image_embeds=modality.get("image"),
            title_embeds=modality.get("title"),
            attribute_embeds=modality.get("attributes"),
            vision_model_output=towers.get("image"),
            title_model_output=towers.get("title"),
            attribute_model_output=towers.get("attributes"),
            category_model_output=category_output,
        )

    def contrastive_loss(
        self,
        category_embeds: torch.Tensor,
        product_embeds: torch.Tensor,
        category_ids: torch.Tensor | None = None,
        path_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The configured loss on (possibly gathered) normalised embeddings; with `matryoshka_dims`, the mean
        of the loss at the full size and at each nested size (the first `d` dimensions, renormalised)."""
        loss_type = self.config.loss_type
        if loss_type != "infonce" and category_ids is None:
            raise ValueError(
                f"loss_type={loss_type!r} needs category_ids (one integer id per pair's category)"
            )
        if loss_type == "path_positive" and path_ids is None:
            raise ValueError(
                "loss_type='path_positive' needs path_ids (the ids of each product's path nodes)"
            )

        def loss(categories: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
            return clipita_contrastive_loss(
                categories,
                products,
                self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp(),
                loss_lambda=self.config.loss_lambda,
                category_ids=category_ids if loss_type != "infonce" else None,
                path_ids=path_ids if loss_type == "path_positive" else None,
            )

        nested = getattr(self.config, "matryoshka_dims", None) or []
        losses = [loss(category_embeds, product_embeds)]
        losses += [loss(_truncate(category_embeds, d), _truncate(product_embeds, d)) for d in nested]
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()

    # ----- user helpers: batch, normalise, return numpy or torch -----

    def _get_processor(self, processor):
        if processor is not None:
            return processor
        if self.processor is None:
            from transformers import AutoProcessor

            if not self.name_or_path:
                raise ValueError(
                    "no processor: pass processor=... or load the model with from_pretrained(folder)"
                )
            self.processor = AutoProcessor.from_pretrained(self.name_or_path, trust_remote_code=True)
        return self.processor

    def _encode(
        self, num_items: int, make_batch, encode_batch, batch_size, convert_to_numpy, show_progress_bar, desc
    ):
        starts = range(0, num_items, batch_size)
        if show_progress_bar is None:
            show_progress_bar = num_items > 4 * batch_size
        if show_progress_bar:
            from transformers.utils.logging import tqdm  # honours disable_progress_bar()

            starts = tqdm(starts, desc=desc, unit="batch")
        was_training = self.training
        self.eval()
        outputs = []
        try:
            with torch.no_grad():  # not inference_mode: tensors stay usable in autograd afterwards
                for start in starts:
                    inputs = make_batch(start, start + batch_size).to(self.device)
                    outputs.append(encode_batch(inputs).float().cpu())
        finally:
            self.train(was_training)
        embeds = torch.cat(outputs) if outputs else torch.zeros(0, self.config.projection_dim)
        return embeds.numpy() if convert_to_numpy else embeds

    def _cut(self, embeds: torch.Tensor, dim: int | None) -> torch.Tensor:
        """`encode_*(dim=...)`: the embeddings cut to a nested size (`_truncate`), or as they are."""
        if dim is None or dim == embeds.shape[-1]:
            return embeds
        if not 0 < dim < embeds.shape[-1]:
            raise ValueError(f"dim must lie between 1 and projection_dim={embeds.shape[-1]}, got {dim}")
        return _truncate(embeds, dim)

    def encode_categories(
        self,
        categories: Sequence[str | Sequence[str]],
        batch_size: int = 64,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        processor=None,
        dim: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Category names or paths ("Home > Kitchen > Mugs" or a list) -> `[N, d]` normalised embeddings
        (`dim`: the first `dim` dimensions renormalised, for a model trained with `matryoshka_dims`)."""
        processor = self._get_processor(processor)
        categories = [categories] if isinstance(categories, str) else list(categories)
        return self._encode(
            len(categories),
            lambda i, j: processor(categories=categories[i:j], return_tensors="pt"),
            lambda b: self._cut(
                self.get_category_features(b["category_input_ids"], b["category_attention_mask"]), dim
            ),
            batch_size,
            convert_to_numpy,
            show_progress_bar,
            "encoding categories",
        )

    def encode_products(
        self,
        images: Sequence | None = None,
        titles: Sequence[str] | None = None,
        attributes: Sequence | None = None,
        batch_size: int = 32,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        processor=None,
        dim: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Products (PIL images, titles, attribute lists or dicts) -> `[N, d]` normalised embeddings.

        Only the modalities this model uses are needed; a product's embedding does not depend on
        the other products in its batch. `dim`: as in `encode_categories`.
        """
        processor = self._get_processor(processor)
        given = {"images": images, "titles": titles, "attributes": attributes}
        lengths = {name: len(value) for name, value in given.items() if value is not None}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"images, titles and attributes must have one entry per product, got {lengths}")
        needed = {"image": "images", "title": "titles", "attributes": "attributes"}
        given = {needed[m]: given[needed[m]] for m in self.config.product_modalities}
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(
                f"this CLIP-ITA model builds products from {self.config.product_modalities}; "
                f"encode_products lacks {', '.join(missing)}"
            )
        return self._encode(
            next(iter(lengths.values()), 0),
            lambda i, j: processor(**{k: list(v[i:j]) for k, v in given.items()}, return_tensors="pt"),
            lambda b: self._cut(self.get_product_features(**b), dim),
            batch_size,
            convert_to_numpy,
            show_progress_bar,
            "encoding products",
        )


__all__ = ["CLIPITAModel", "CLIPITAOutput", "CLIPITAPreTrainedModel", "clipita_contrastive_loss"]
