"""The model card: model_card.md (a Jinja template) rendered with huggingface_hub's ModelCard / ModelCardData.

train.py renders it with the final validation metrics, release.py again with eval.py's test results. The
card's metadata carries the test results as a model-index (`EvalResult`s, in % like the paper), so the Hub
shows them; every input is scrubbed of access tokens before it reaches the card.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from clipita.results import GROUPS, check_result, runs_by_name, select_result
from clipita.secrets import find_secret, known_tokens, scrub
from clipita.tree import LEVELS
from configuration_clipita import VARIANTS

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_card.md"
LICENSE = "apache-2.0"
PIPELINE_TAG = "zero-shot-image-classification"  # closest Hub task: text labels (categories) vs images
TASK_NAME = "Category-to-image retrieval"
TAGS = ["clip", "e-commerce", "retrieval", "category-to-image", "custom_code", "sentence-transformers"]
METRICS = ("P@1", "P@5", "P@10", "mAP@5", "mAP@10", "R-precision", "R@10", "MRR", "nDCG@10")
VARIANT_TITLES = {"clip-i": "CLIP-I", "clip-ia": "CLIP-IA", "clip-ita": "CLIP-ITA"}
# Table 1 of the paper (XMarket, P@10 / mAP@10 in %), for the reader's reference only.
PAPER_TABLE = {
    "clip-i": {"all": "3.79 / 7.25", "general": "16.78 / 20.14", "specific": "11.53 / 17.90"},
    "clip-ia": {"all": "3.29 / 6.24", "general": "22.78 / 26.29", "specific": "29.32 / 39.27"},
    "clip-ita": {"all": "13.43 / 20.53", "general": "30.95 / 34.28", "specific": "40.02 / 49.87"},
}
CITATION = """@inproceedings{hendriksen2022extending,
  title         = {Extending {CLIP} for Category-to-image Retrieval in E-commerce},
  author        = {Hendriksen, Mariya and Bleeker, Maurits and Vakulenko, Svitlana and
                   van Noord, Nanne and Kuiper, Ernst and de Rijke, Maarten},
  booktitle     = {Advances in Information Retrieval: 44th European Conference on IR Research, ECIR 2022},
  series        = {Lecture Notes in Computer Science},
  volume        = {13185},
  pages         = {289--303},
  publisher     = {Springer},
  year          = {2022},
  eprint        = {2112.11294},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2112.11294}
}"""
SYNTHETIC_NAME = "CLIP-ITA synthetic demo catalogue"
SYNTHETIC_ID = "clipita-synthetic-catalogue"
TRAINING_CURVE = "training_curve.png"  # written by train.py next to the model files
MAX_LIST = 10  # longer lists in metrics.json (loss curves) are summarised, not printed
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----- inputs --------------------------------------------------------------------------------------------


def describe_dataset(name: str | None) -> dict:
    """What the card says about a dataset: a display name, an id for the model-index, the Hub id if it is
    one, and whether it is the embedded synthetic catalogue (a folder with the generator's catalogue.json)."""
    if not name:
        return {"name": None, "id": None, "hub_id": None, "synthetic": False, "info": None}
    name = str(name)
    path = Path(name)
    if name == "demo":  # clipita.data's name for the embedded catalogue, generated into demo_dir()
        from clipita.data import demo_dir

        path = demo_dir()
    info = None
    try:
        info = json.loads((path / "catalogue.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    synthetic = (isinstance(info, dict) and "generator_version" in info) or any(
        word in name.lower() for word in ("demo", "synthetic", "embedded")
    )
    if synthetic:
        return {"name": SYNTHETIC_NAME, "id": SYNTHETIC_ID, "hub_id": None, "synthetic": True, "info": info}
    local = path.exists() or path.is_absolute() or name.startswith(".")
    if REPO_ID.match(name) and not local:
        return {"name": name, "id": name, "hub_id": name, "synthetic": False, "info": None}
    return {"name": path.name, "id": path.name, "hub_id": None, "synthetic": False, "info": None}


def display_path(value: Any) -> str | None:
    """A model or dataset path as a card shows it: absolute local paths by their last part."""
    if not value:
        return None
    return Path(str(value)).name if Path(str(value)).is_absolute() else str(value)


def shorten_home(value: Any) -> Any:
    """Paths under the home folder as ~/...: a card should not publish the user's account name."""
    home = str(Path.home())
    if isinstance(value, str) and home not in ("/", "") and value.startswith(home):
        return "~" + value[len(home) :]
    if isinstance(value, Mapping):
        return {k: shorten_home(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten_home(v) for v in value]
    return value


# ----- formatting ----------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, lists joined, nested objects as compact JSON."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a/b/c": value}, keeping order; long lists and lists of objects (curves, histories)
    become their length."""
    if isinstance(value, (list, tuple)) and (
        len(value) > MAX_LIST or any(isinstance(v, (Mapping, list, tuple)) for v in value)
    ):
        return {prefix: f"({len(value)} values)"}
    if not isinstance(value, Mapping):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flatten(item, f"{prefix}/{key}" if prefix else str(key)))
    return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def is_scored(value: Any) -> bool:
    """An evaluation entry: {"overall": {metric: value}, "seen": ..., "unseen": ..., "num_queries": ...}."""
    return isinstance(value, Mapping) and isinstance(value.get("overall"), Mapping)


def scores_table(entries: Mapping[str, Mapping], label: str) -> str:
    """Entries (settings, or validation points) x query groups, every metric in % (x100, like the paper)."""
    present = {m for entry in entries.values() for g in GROUPS for m in (entry.get(g) or {})}
    metrics = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    rows = []
    for name, entry in entries.items():
        counts = entry.get("num_queries") or {}
        for group in GROUPS:
            scores = entry.get(group)
            if scores is None:
                continue
            cells = ["–" if scores.get(m) is None else f"{100 * scores[m]:.2f}" for m in metrics]
            rows.append([name, group, fmt(counts.get(group))] + cells)
    return markdown_table([label, "queries", "#queries"] + metrics, rows)


def evaluation_table(result: Mapping) -> str:
    settings = result["settings"]
    order = [s for s in LEVELS if s in settings] + sorted(set(settings) - set(LEVELS))
    return scores_table({s: settings[s] for s in order}, "setting")


def per_depth_table(result: Mapping) -> str | None:
    """This run's retrieval and placement at every depth of the tree (eval.py's "per_depth"), as eval.py
    prints it, so a gap at one level never hides inside "all"."""
    if not result.get("per_depth"):
        return None
    from clipita.evaluation import format_per_depth

    name = str(result.get("name") or result.get("model") or "this checkpoint")
    return format_per_depth({name: result}).strip()


def comparison_table(result: Mapping) -> str | None:
    """This run beside the other runs of the same evaluation (baselines, other variants), as eval.py prints it."""
    if not result.get("baselines"):
        return None
    from clipita.evaluation import format_table

    return format_table(runs_by_name(dict(result))).strip()


def metrics_table(metrics: Mapping) -> str:
    """training's metrics.json: evaluation entries (step 0, best, last...) as score tables in %, the rest
    as key: value rows; any other nesting still renders."""
    parts, rest = [], {}
    for key, value in metrics.items():
        if is_scored(value):
            parts.append(scores_table({key: value}, "evaluation"))
        elif isinstance(value, Mapping) and any(is_scored(v) for v in value.values()):
            entries = {
                f"{name} (step {entry['step']})"
                if "step" in entry and not name.startswith("step")
                else name: entry
                for name, entry in value.items()
                if is_scored(entry)
            }
            parts.append(f"`{key}`:\n\n" + scores_table(entries, "evaluation"))
            rest.update(flatten({k: v for k, v in value.items() if not is_scored(v)}, key))
        else:
            rest.update(flatten(value, key))
    if rest:
        parts.append(markdown_table(["key", "value"], [[f"`{k}`", fmt(v)] for k, v in rest.items()]))
    return "\n\n".join(parts)


def metric_type(metric: str, group: str) -> str:
    """Metric id as retrieval leaderboards name them (P@10 -> precision_at_10); seen / unseen as a suffix."""
    base = metric.lower().replace("-", "_")
    for prefix, name in (
        ("p@", "precision_at_"),
        ("map@", "map_at_"),
        ("r@", "recall_at_"),
        ("ndcg@", "ndcg_at_"),
    ):
        if base.startswith(prefix):
            base = name + base[len(prefix) :]
    base = re.sub(r"[^a-z0-9_]", "_", base)
    return base if group == "overall" else f"{base}_{group}"


def to_eval_results(result: Mapping, dataset: dict) -> list[EvalResult]:
    """results.json -> one EvalResult per (setting, query group, metric) with a value, in %."""
    dataset_type = dataset["id"] or "unknown"
    out = []
    for setting, groups in result["settings"].items():
        for group in GROUPS:
            for metric, value in (groups.get(group) or {}).items():
                if value is None:
                    continue
                out.append(
                    EvalResult(
                        task_type=PIPELINE_TAG,
                        task_name=TASK_NAME,
                        dataset_type=dataset_type,
                        dataset_name=f"{dataset['name'] or dataset_type} ({setting} setting)",
                        dataset_config=setting,
                        dataset_split=result.get("split") or "test",
                        metric_type=metric_type(metric, group),
                        metric_name=metric if group == "overall" else f"{metric} ({group} categories)",
                        metric_value=round(100 * float(value), 2),
                    )
                )
    return out


# ----- model description ---------------------------------------------------------------------------------


def config_dict(model_config: Any) -> dict:
    if hasattr(model_config, "to_dict"):
        return model_config.to_dict()
    if isinstance(model_config, Mapping):
        return dict(model_config)
    raise TypeError(f"model_config must be a CLIPITAConfig or a dict, got {type(model_config).__name__}")


def variant_of(config: Mapping) -> str | None:
    modalities = list(config.get("product_modalities") or [])
    return next((name for name, value in VARIANTS.items() if value == modalities), None)


def count_parameters(model_dir: Path) -> int | None:
    """Parameters in the folder's safetensors files, read from their headers (no weights loaded)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


# (label, where to find it: a training argument, or "metrics:" + a path in metrics.json)
TRAINING_SUMMARY = (
    ("variant", "variant"),
    ("started from", "base_model"),
    ("trained against", "category_level"),
    ("loss", "loss"),
    ("share of leaf pairs (at the 'all' level; none: uniform over the path)", "leaf_probability"),
    ("broad dropout (title / image dropped for pairs above the leaf)", "broad_dropout"),
    ("steps", "metrics:train/steps"),
    ("epochs", "metrics:train/epochs"),
    ("global batch size", "metrics:train/global_batch_size"),
    ("learning rate (heads, attribute tower)", "learning_rate"),
    ("learning rate (CLIP towers)", "tower_learning_rate"),
    ("frozen vision / text tower", "freeze_vision,freeze_text"),
    ("initial temperature", "temperature"),
    ("final model", "metrics:validation/final_model"),
    ("training time (s)", "metrics:train/train_seconds"),
)


def training_summary(training_args: Mapping, metrics: Mapping) -> str | None:
    """The few facts of a run a reader wants first; the full argument list goes in a collapsed table."""
    flat_metrics = flatten(metrics)
    rows = []
    for label, source in TRAINING_SUMMARY:
        if source.startswith("metrics:"):
            values = [flat_metrics.get(source.removeprefix("metrics:"))]
        else:
            values = [training_args.get(key) for key in source.split(",")]
        if all(v is None for v in values):
            continue
        if label == "started from" and not values[0]:
            continue
        if label == "trained against":
            values = [LEVELS.get(values[0], values[0])]
        rows.append([label, " / ".join(fmt(v) for v in values)])
    return markdown_table(["", ""], rows) if rows else None


def architecture_rows(
    config: Mapping, model_dir: Path, training_args: Mapping | None = None
) -> list[list[str]]:
    clip = config.get("clip_config") or {}
    text, vision = clip.get("text_config") or {}, clip.get("vision_config") or {}

    def frozen(flag: str) -> str:
        """Freezing is training setup (train.py's --freeze_* flags), not part of the model config."""
        if not training_args:
            return "not recorded"
        return fmt(bool(training_args.get(flag) or training_args.get("freeze_towers")))

    rows = [
        ["product", " + ".join(config.get("product_modalities") or [])],
        ["shared space (d)", fmt(config.get("projection_dim"))],
        [
            "heads",
            f"{fmt(config.get('head_num_hidden_layers'))} hidden layers of {fmt(config.get('head_hidden_dim'))}",
        ],
        ["attribute pooling", fmt(config.get("attribute_pooling"))],
        ["loss", f"{fmt(config.get('loss_type'))}, lambda = {fmt(config.get('loss_lambda'))}"],
        [
            "temperature",
            f"{fmt(config.get('contrastive_temperature'))} "
            f"({'learned' if config.get('learnable_temperature') else 'fixed'})",
        ],
        [
            "CLIP text tower",
            f"layers {fmt(text.get('num_hidden_layers'))}, width {fmt(text.get('hidden_size'))}, "
            f"vocabulary {fmt(text.get('vocab_size'))}, frozen: {frozen('freeze_text')}",
        ],
        [
            "CLIP vision tower",
            f"layers {fmt(vision.get('num_hidden_layers'))}, width {fmt(vision.get('hidden_size'))}, "
            f"images {fmt(vision.get('image_size'))} px, patch {fmt(vision.get('patch_size'))}, "
            f"frozen: {frozen('freeze_vision')}",
        ],
    ]
    parameters = count_parameters(model_dir)
    if parameters is not None:
        rows.append(["parameters", f"{parameters:,}"])
    return rows


def processor_settings(model_dir: Path) -> dict:
    path = model_dir / "processor_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def copy_plot(ablation_plot: str | os.PathLike, model_dir: Path) -> str:
    """Copy the plot next to the card and return the relative link the card uses."""
    source = Path(ablation_plot)
    if not source.is_file():
        raise FileNotFoundError(f"ablation plot {source} does not exist")
    if source.suffix.lower() not in (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp"):
        raise ValueError(f"ablation plot {source} is not an image (.png, .jpg, .svg, ...)")
    target = model_dir / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return source.name


# ----- rendering -----------------------------------------------------------------------------------------


def render_model_card(
    model_dir,
    *,
    model_config,
    training_args: dict | None = None,
    metrics: dict | None = None,
    eval_results: dict | None = None,
    ablation_plot: str | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """Render model_card.md into `model_dir/README.md` and return the card.

    `metrics`: training's metrics.json (validation metrics; any nesting). `eval_results`: eval.py's
    results.json object for this model (shown in %, and as model-index EvalResults in the metadata).
    `ablation_plot`: an image copied into the folder and shown. Secrets in any input are redacted.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not TEMPLATE_PATH.is_file():
        raise FileNotFoundError(f"the card template {TEMPLATE_PATH} is missing")
    tokens = known_tokens()
    config = config_dict(model_config)
    training_args = scrub(dict(training_args or {}), tokens)
    metrics = scrub(dict(metrics or {}), tokens)
    result = None
    if eval_results is not None:
        raw = scrub(dict(eval_results), tokens)
        if "settings" in raw:
            check_result(raw)  # before selecting: selection drops baselines that are not objects
        result = select_result(raw)
        check_result(result)

    variant = variant_of(config)
    title = VARIANT_TITLES.get(variant, "CLIP-ITA")
    model_name = repo_id.split("/")[-1] if repo_id else (variant or "clip-ita")
    train_set = describe_dataset(training_args.get("dataset"))
    test_set = describe_dataset(result.get("dataset") if result else None)
    training_args = shorten_home(training_args)
    if result and not test_set["name"]:
        test_set = train_set
    synthetic = train_set["synthetic"] or test_set["synthetic"]
    hub_datasets = [d["hub_id"] for d in (train_set, test_set) if d["hub_id"]]
    base_model = config.get("base_clip_model")

    card_data = ModelCardData(
        language="en" if synthetic else None,  # the demo catalogue is English; a user's may not be
        license=LICENSE,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=TAGS + ([variant] if variant else []),
        datasets=list(dict.fromkeys(hub_datasets)) or None,
        base_model=base_model or None,
        model_name=model_name,
        eval_results=to_eval_results(result, test_set) if result else None,
    )
    processor = processor_settings(model_dir)
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        title=title,
        variant=variant,
        modalities=config.get("product_modalities") or [],
        repo_id=repo_id or "your-org/clip-ita",
        base_model=base_model,
        architecture=markdown_table(["", ""], architecture_rows(config, model_dir, training_args)),
        category_format=processor.get("category_format", "leaf"),
        max_attributes=processor.get("max_attributes", config.get("max_attributes")),
        train_set=train_set,
        test_set=test_set,
        synthetic=synthetic,
        training_table=markdown_table(
            ["argument", "value"], [[f"`{k}`", fmt(v)] for k, v in flatten(training_args).items()]
        )
        if training_args
        else None,
        training_summary=training_summary(training_args, metrics),
        validation_table=metrics_table(metrics) if metrics else None,
        training_curve=TRAINING_CURVE if (model_dir / TRAINING_CURVE).is_file() else None,
        result=result,
        evaluation_table=evaluation_table(result) if result else None,
        comparison_table=comparison_table(result) if result else None,
        per_depth_table=per_depth_table(result) if result else None,
        evaluated_model=display_path(result.get("name") or result.get("model")) if result else None,
        ablation_plot=copy_plot(ablation_plot, model_dir) if ablation_plot else None,
        paper_row=PAPER_TABLE.get(variant),
        citation=CITATION,
    )
    if find_secret(str(card), tokens):
        raise RuntimeError("the rendered card contains an access token; nothing was written")
    card.save(model_dir / "README.md")
    return card


# ----- the catalogue index as a dataset repo ------------------------------------------------------------

INDEX_CARD = """---
{{ card_data }}
---

# Catalogue index{% if model_repo_id %} for [`{{ model_repo_id }}`](https://huggingface.co/{{ model_repo_id }}){% endif %}

A searchable product catalogue for category-to-image retrieval: {{ count }} products embedded by
`{{ model_name }}` ({{ dim }}-dimensional, L2-normalised), in a FAISS `{{ kind }}` index.
{%- if dataset.name %} The products are {% if dataset.synthetic %}the {{ dataset.name }}{% else %}`{{ dataset.name }}`{% endif %}
{%- if split %} (split `{{ split }}`){% endif %}{% if dataset.synthetic %}: demo data, not a real shop's{% endif %}.{% endif %}

| file | holds |
|---|---|
| `index.faiss` | the FAISS index (inner product = cosine similarity) |
| `embeddings.npy` | float32 `[{{ count }}, {{ dim }}]` product embeddings, row i = product i |
| `metadata.parquet` | `product_id`, `title`, `category` (root -> leaf), `attributes` per row |
| `manifest.json` | how the index was built: model, index kind and parameters, measured recall |

```python
import faiss
import pandas as pd
from huggingface_hub import snapshot_download
from transformers import AutoModel

path = snapshot_download("{{ repo_id }}", repo_type="dataset")
index = faiss.read_index(f"{path}/index.faiss")
metadata = pd.read_parquet(f"{path}/metadata.parquet")
model = AutoModel.from_pretrained("{{ model_repo_id or "the model that built the index" }}", trust_remote_code=True)
scores, rows = index.search(model.encode_categories(["Ceramic Mugs"]), 10)
print(metadata.iloc[rows[0]][["title", "category"]])
```
{% if kind != "flat" %}
The index is approximate; set the search parameters recorded in `manifest.json` (`index.params`) before
searching. Its recall@10 against exact search was measured when it was built: {{ recall }}.
{% endif %}"""


def render_index_card(
    index_dir, *, repo_id: str | None = None, model_repo_id: str | None = None
) -> DatasetCard:
    """Write `index_dir/README.md`: what the index folder holds and how to search it."""
    index_dir = Path(index_dir)
    manifest_path = index_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{index_dir} is not a saved catalogue index: it has no manifest.json")
    manifest = json.loads(manifest_path.read_text())
    model_info = manifest.get("model") or {}
    model_name = model_repo_id or model_info.get("name_or_path") or "an unrecorded model"
    recall = {k: v for k, v in (manifest.get("recall") or {}).items() if k.startswith("recall")}
    source = manifest.get("dataset")  # clipita.index: {"source": ..., "split": ...}
    dataset = describe_dataset(source.get("source") if isinstance(source, Mapping) else source)
    card = DatasetCard.from_template(
        DatasetCardData(
            license=LICENSE,
            pretty_name=f"{model_repo_id or 'CLIP-ITA'} catalogue index",
            tags=["clip", "e-commerce", "retrieval", "faiss", "embeddings"],
            configs=[{"config_name": "default", "data_files": "metadata.parquet"}],
        ),
        template_str=INDEX_CARD,
        repo_id=repo_id or "your-org/clip-ita-index",
        model_repo_id=model_repo_id,
        model_name=Path(str(model_name)).name if Path(str(model_name)).is_absolute() else model_name,
        count=manifest.get("count", "?"),
        dim=manifest.get("embedding_dim", "?"),
        kind=(manifest.get("index") or {}).get("kind", "?"),
        recall=", ".join(f"{k} = {fmt(v)}" for k, v in recall.items()) or "not recorded",
        dataset=dataset,
        split=source.get("split") if isinstance(source, Mapping) else None,
    )
    if find_secret(str(card)):
        raise RuntimeError("the rendered index card contains an access token; nothing was written")
    card.save(index_dir / "README.md")
    return card


__all__ = [
    "describe_dataset",
    "render_index_card",
    "render_model_card",
    "to_eval_results",
]
