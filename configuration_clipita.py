"""Configuration of CLIP-ITA (Hendriksen et al., ECIR 2022): CLIP towers, an attribute tower and fusion heads.

This file ships to the Hub as remote code: it imports nothing from the project.
"""

from __future__ import annotations

from transformers import CLIPConfig, PretrainedConfig

MODALITIES = ("image", "title", "attributes")
VARIANTS = {
    "clip-i": ["image"],
    "clip-ia": ["image", "attributes"],
    "clip-ita": ["image", "title", "attributes"],
}
ATTRIBUTE_POOLINGS = ("mean", "attention")
LOSSES = ("infonce", "multi_positive", "path_positive")
# The one temperature default: train.py's flags and the from-scratch model read these. CLIP's initial
# temperature, learned; the paper keeps 1.0 fixed (contrastive_temperature=1.0, learnable_temperature=False).
DEFAULT_TEMPERATURE = 0.07
DEFAULT_LEARNABLE_TEMPERATURE = True


class CLIPITAConfig(PretrainedConfig):
    r"""Every knob of [`CLIPITAModel`].

    Args:
        clip_config (`dict` or `CLIPConfig`): the wrapped CLIP model (towers and their projections).
        product_modalities (`list[str]`): what makes a product: `["image"]` (CLIP-I),
            `["image", "attributes"]` (CLIP-IA) or `["image", "title", "attributes"]` (CLIP-ITA).
        projection_dim (`int`): size of the shared category / product space.
        head_hidden_dim (`int`): width of the hidden layers of both heads (default: projection_dim).
        head_num_hidden_layers (`int`): hidden layers per head (paper: 2, each Linear -> LayerNorm -> GELU).
        head_dropout (`float`): dropout after each hidden layer of the heads.
        attribute_pooling (`str`): `"mean"` (paper) or `"attention"` (a learned query attends over the
            product's attributes: the paper's named future work).
        loss_type (`str`): `"infonce"` (paper: bidirectional InfoNCE with in-batch negatives),
            `"multi_positive"` (products of the same category in a batch are not negatives of it) or
            `"path_positive"` (no product is a negative of a category on its own path: its leaf or an
            ancestor, as the evaluation's relevance has it).
        contrastive_temperature (`float`): initial softmax temperature (default: CLIP's 0.07; paper: 1.0).
        learnable_temperature (`bool`): learn the temperature (as CLIP's logit scale; default) or keep it
            fixed (paper).
        loss_lambda (`float`): weight of the product->category direction (paper: 0.5).
        initializer_range (`float`): std of the attention pooler's query at initialisation.
        deduplicate_texts (`bool`): run the text tower once per distinct token sequence of a call (titles,
            attribute strings, category names) and share the output; same results, less work.
        pooled_last_layer (`bool`): run each tower's last layer for its pooled token only (the image's
            class token, the text's end token), the only one CLIP-ITA's embeddings read: same embeddings,
            less work. The towers' per-token `last_hidden_state` is then not returned unless per-token
            outputs are asked for (`output_hidden_states` / `output_attentions`, which run whole towers).
        matryoshka_dims (`list[int]`): nested embedding sizes below `projection_dim` trained alongside it
            (Matryoshka: the loss is averaged over the full size and each of these, on the first `d`
            dimensions renormalised), so embeddings can be cut to any of them (`encode_*(dim=d)`). Empty: off.

    Which towers are frozen is a training choice (train.py's `--freeze_*` flags), not part of the model.
    """

    model_type = "clipita"
    sub_configs = {"clip_config": CLIPConfig}

    def __init__(
        self,
        clip_config: dict | CLIPConfig | None = None,
        product_modalities: list[str] | tuple[str, ...] = ("image", "title", "attributes"),
        projection_dim: int = 512,
        head_hidden_dim: int | None = None,
        head_num_hidden_layers: int = 2,
        head_dropout: float = 0.0,
        attribute_pooling: str = "mean",
        loss_type: str = "infonce",
        contrastive_temperature: float = DEFAULT_TEMPERATURE,
        learnable_temperature: bool = DEFAULT_LEARNABLE_TEMPERATURE,
        loss_lambda: float = 0.5,
        initializer_range: float = 0.02,
        deduplicate_texts: bool = True,
        pooled_last_layer: bool = True,
        matryoshka_dims: list[int] | tuple[int, ...] | None = None,
        **kwargs,
    ):
        if clip_config is None:
            clip_config = CLIPConfig()
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**clip_config)
        self.clip_config = clip_config

        product_modalities = list(product_modalities)
        unknown = [m for m in product_modalities if m not in MODALITIES]
        if unknown or not product_modalities:
            raise ValueError(
                f"product_modalities must be a non-empty subset of {MODALITIES}, got {product_modalities}"
            )
        if attribute_pooling not in ATTRIBUTE_POOLINGS:
            raise ValueError(
                f"attribute_pooling must be one of {ATTRIBUTE_POOLINGS}, got {attribute_pooling!r}"
            )
        if loss_type not in LOSSES:
            raise ValueError(f"loss_type must be one of {LOSSES}, got {loss_type!r}")
        if not 0.0 <= loss_lambda <= 1.0:
            raise ValueError(f"loss_lambda must be in [0, 1], got {loss_lambda}")
        if contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature must be positive, got {contrastive_temperature}")
        dims = sorted({int(d) for d in matryoshka_dims or ()}, reverse=True)
        if any(not 0 < d < projection_dim for d in dims):
            raise ValueError(
                f"matryoshka_dims must lie between 0 and projection_dim={projection_dim}, got {dims}"
            )
        self.matryoshka_dims = dims
        self.product_modalities = [m for m in MODALITIES if m in product_modalities]
        self.projection_dim = projection_dim
        self.head_hidden_dim = head_hidden_dim or projection_dim
        self.head_num_hidden_layers = head_num_hidden_layers
        self.head_dropout = head_dropout
        self.attribute_pooling = attribute_pooling
        self.loss_type = loss_type
        self.contrastive_temperature = contrastive_temperature
        self.learnable_temperature = learnable_temperature
        self.loss_lambda = loss_lambda
        self.initializer_range = initializer_range
        self.deduplicate_texts = deduplicate_texts
        self.pooled_last_layer = pooled_last_layer
        super().__init__(**kwargs)

    @property
    def variant(self) -> str | None:
        """The paper's name for this modality set (clip-i / clip-ia / clip-ita), if it is one of them."""
        for name, modalities in VARIANTS.items():
            if modalities == self.product_modalities:
                return name
        return None

    @classmethod
    def for_variant(cls, variant: str, **kwargs) -> CLIPITAConfig:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        return cls(product_modalities=VARIANTS[variant], **kwargs)


__all__ = ["CLIPITAConfig", "DEFAULT_LEARNABLE_TEMPERATURE", "DEFAULT_TEMPERATURE", "VARIANTS"]
