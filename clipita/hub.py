"""Hub release: check that a model folder is ready to publish, then upload it with huggingface_hub.

Everything up to the upload is checked offline (the Hub may be out of reach): the files a Hub user's
`AutoModel.from_pretrained(..., trust_remote_code=True)` needs, safetensors only, a card whose metadata
parses, and no access token anywhere. Tokens are never taken as arguments: huggingface_hub reads them
from `HF_TOKEN` or the `hf auth login` file itself.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import pickletools
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from clipita.secrets import GZIP_MAGIC, ZIP_MAGIC, scan_files

CODE_FILES = ("configuration_clipita.py", "modeling_clipita.py", "processing_clipita.py", "custom_st.py")
MODEL_AUTO_CLASSES = ("AutoConfig", "AutoModel")
PICKLE_PROTOCOLS = range(2, 6)  # pickles of protocol 2+ start with PROTO (0x80) and the protocol number
# Opcodes that import or call: a protocol 0/1 pickle (no header) holding one can run code when loaded
CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"})
PICKLE_SNIFF_BYTES = 1 << 20
INDEX_MANIFEST = "manifest.json"
# Training artefacts that live in train.py's output folder but never ship (clipita.training.export).
IGNORE_PATTERNS = ["checkpoints/**", "logs/**"]


# ----- folder checks -------------------------------------------------------------------------------------


def release_files(folder: str | os.PathLike) -> list[str]:
    """The files `push_folder` uploads, relative and sorted: all but IGNORE_PATTERNS and what
    `upload_folder` always skips (.git/, .cache/huggingface/)."""
    root = Path(folder)
    files = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
    return list(filter_repo_objects(files, ignore_patterns=DEFAULT_IGNORE_PATTERNS + IGNORE_PATTERNS))


def _read_json(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{path.name} is not valid JSON: {error}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} must hold a JSON object")
        return None
    return data


def _check_auto_map(
    folder: Path, file_name: str, auto_map: dict, classes: Iterable[str], problems: list[str]
):
    for auto_class in classes:
        reference = auto_map.get(auto_class)
        if not isinstance(reference, str) or "." not in reference:
            problems.append(
                f"{file_name}: auto_map lacks {auto_class} (call clipita.bootstrap.register_auto_classes() before saving)"
            )
            continue
        module = reference.split("--")[-1].rsplit(".", 1)[0] + ".py"
        if not (folder / module).is_file():
            problems.append(f"{file_name}: auto_map.{auto_class} points to {module}, which the folder lacks")


def _check_code(folder: Path, problems: list[str]) -> None:
    """Remote code must import only transformers / torch / its siblings: never this project's package."""
    for name in CODE_FILES:
        path = folder / name
        if not path.is_file():
            problems.append(f"code file {name} is missing")
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=name)
        except SyntaxError as error:
            problems.append(f"code file {name} does not parse: {error}")
            continue
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            if any(m == "clipita" or m.startswith("clipita.") for m in modules):
                problems.append(
                    f"code file {name} line {node.lineno} imports the clipita package (not on the Hub)"
                )


def _check_sentence_transformers(folder: Path, problems: list[str]) -> None:
    """modules.json names custom_st.py's module (clipita.bootstrap.add_sentence_transformers_files writes it)."""
    hint = "(clipita.bootstrap.add_sentence_transformers_files writes it)"
    path = folder / "modules.json"
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"modules.json is missing: SentenceTransformer cannot load the folder {hint}")
        return
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"modules.json is not valid JSON: {error}")
        return
    types = [m.get("type") for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    if not any(isinstance(t, str) and t.startswith("custom_st.") for t in types):
        problems.append(f"modules.json does not name a custom_st module {hint}")
    if _read_json(folder / "config_sentence_transformers.json", problems) is None:
        problems[-1] += f" {hint}"


def _is_pickle_stream(head: bytes) -> bool:
    """Whether bytes start a pickle: protocol 2+ by its header, protocol 0/1 (no header) when the bytes
    parse as pickle opcodes up to STOP and import or call something."""
    if len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        return True
    seen = set()
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(head)):
            seen.add(opcode.name)
            if opcode.name == "STOP":
                return bool(seen & CODE_OPCODES)
    except Exception:  # not opcodes (or cut short): not a pickle this check can see
        return False
    return False


def _npy_holds_objects(f) -> bool:
    """A .npy stream (after its magic) whose dtype holds Python objects: np.load needs pickle for it."""
    import numpy as np

    try:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        dtype = read_header(f)[2]
    except (ValueError, OSError):
        return True  # a .npy header numpy cannot read is not something to publish either
    return dtype.hasobject


def pickle_reason(path: Path) -> str | None:
    """Why a file is (or holds) a pickle, judged by its content, never its name; None when it is not.

    A raw pickle (any protocol), a zip whose members hold one (torch.save checkpoints with data.pkl,
    .npz), a .npy object array, or a gzip of any of these.
    """
    with path.open("rb") as f:
        head = f.read(PICKLE_SNIFF_BYTES)
    opener = gzip.open if head.startswith(GZIP_MAGIC) else open
    if opener is gzip.open:
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(PICKLE_SNIFF_BYTES)
        except (OSError, EOFError):
            return None  # a damaged gzip: the secret scan reports it cannot be unpacked
    if head.startswith(b"\x93NUMPY"):
        with opener(path, "rb") as f:
            return "a numpy array of Python objects (loads through pickle)" if _npy_holds_objects(f) else None
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    with archive.open(member) as f:
                        inner = f.read(PICKLE_SNIFF_BYTES)
                    if _is_pickle_stream(inner):
                        return f"a zip holding a pickle ({member.filename})"
                    if inner.startswith(b"\x93NUMPY"):
                        with archive.open(member) as f:
                            if _npy_holds_objects(f):
                                return f"a zip holding a numpy object array ({member.filename})"
        except zipfile.BadZipFile:
            return None
        return None
    return "a pickle" if _is_pickle_stream(head) else None


def find_pickles(folder: Path, files: list[str]) -> list[str]:
    """The files (relative to `folder`) that are or hold pickles, each with why."""
    found = []
    for name in files:
        reason = pickle_reason(folder / name)
        if reason:
            found.append(f"{name} ({reason})")
    return found


def _check_weights(folder: Path, files: list[str], problems: list[str]) -> None:
    pickles = find_pickles(folder, files)
    if pickles:
        problems.append(f"pickle-based files would be uploaded (use safetensors only): {', '.join(pickles)}")
    if "model.safetensors" not in files and "model.safetensors.index.json" not in files:
        problems.append(
            "model.safetensors is missing (save with save_pretrained(..., safe_serialization=True))"
        )


def _check_tokenizer(files: list[str], processor_config: dict | None, problems: list[str]) -> None:
    if "tokenizer_config.json" not in files:
        problems.append("tokenizer_config.json is missing (save the processor with save_pretrained)")
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= set(files):
        problems.append("tokenizer files are missing: tokenizer.json (or vocab.json + merges.txt)")
    has_image_processor = "preprocessor_config.json" in files or (
        processor_config is not None and isinstance(processor_config.get("image_processor"), dict)
    )
    if not has_image_processor:
        problems.append(
            "no image processor configuration (processor_config.json or preprocessor_config.json)"
        )


def check_model_card(path: str | os.PathLike) -> list[str]:
    """README.md metadata: parses with huggingface_hub, says what the Hub needs, and its model-index
    round-trips through `EvalResult`s unchanged (the Hub's own YAML check runs during upload)."""
    path = Path(path)
    if not path.is_file():
        return ["README.md (the model card) is missing"]
    problems = []
    try:
        card = ModelCard.load(path)
        raw = metadata_load(path) or {}
    except Exception as error:  # any parse failure is a problem to report, not a crash
        return [f"README.md metadata does not parse: {error}"]
    if not card.text.strip():
        problems.append("README.md has metadata but no text")
    for key in ("license", "library_name", "pipeline_tag"):
        if not card.data.get(key):
            problems.append(f"README.md metadata lacks {key}")
    if "custom_code" not in (card.data.get("tags") or []):
        problems.append("README.md metadata tags lack custom_code (the model needs trust_remote_code=True)")
    model_index = raw.get("model-index")
    if model_index is not None:
        try:
            name, results = model_index_to_eval_results(model_index)
            if eval_results_to_model_index(name, results) != model_index:
                problems.append("README.md model-index has fields EvalResult does not keep")
            bad = [r.metric_type for r in results if not isinstance(r.metric_value, (int, float))]
            if bad:
                problems.append(f"README.md model-index has non-numeric values for {', '.join(bad)}")
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"README.md model-index is invalid: {error!r}")
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", card.text):
        if "://" not in target and not (path.parent / target).is_file():
            problems.append(f"README.md shows {target}, which the folder lacks")
    return problems


def scan_for_secrets(folder: str | os.PathLike, files: list[str] | None = None) -> list[str]:
    """Problems for every release file holding an access token (the problem names the file, never the token)."""
    return scan_files(folder, release_files(folder) if files is None else files)


def check_release_folder(model_dir: str | os.PathLike) -> list[str]:
    """Everything that keeps `model_dir` from being a working Hub release; an empty list means ready."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    files = release_files(folder)
    problems: list[str] = []

    config = _read_json(folder / "config.json", problems)
    if config is not None:
        _check_auto_map(folder, "config.json", config.get("auto_map") or {}, MODEL_AUTO_CLASSES, problems)
    processor_config = _read_json(folder / "processor_config.json", problems)
    if processor_config is not None:
        _check_auto_map(
            folder,
            "processor_config.json",
            processor_config.get("auto_map") or {},
            ["AutoProcessor"],
            problems,
        )
    _check_code(folder, problems)
    _check_sentence_transformers(folder, problems)
    _check_weights(folder, files, problems)
    _check_tokenizer(files, processor_config, problems)
    problems += check_model_card(folder / "README.md")
    problems += scan_for_secrets(folder, files)
    return problems


LOAD_CHECK = """
import json, sys
import numpy as np
from PIL import Image
from transformers import AutoModel, AutoProcessor
from transformers.utils.logging import disable_progress_bar

disable_progress_bar()  # the check's output is a JSON line, no "Loading weights" bar
folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
categories = model.encode_categories(["Mugs", "Home > Kitchen > Mugs"], processor=processor)
given = {"image": ("images", [Image.new("RGB", (80, 60), (200, 40, 45))]), "title": ("titles", ["red mug"]),
         "attributes": ("attributes", [["colour: red", "material: ceramic"]])}
products = model.encode_products(**dict(given[m] for m in model.config.product_modalities), processor=processor)
print(json.dumps({
    "module": type(model).__module__,
    "shapes": [list(categories.shape), list(products.shape)],
    "dim": model.config.projection_dim,
    "finite": bool(np.isfinite(categories).all() and np.isfinite(products).all()),
    "norms": [float(n) for n in np.linalg.norm(np.concatenate([categories, products]), axis=1)],
}))
"""


def load_check(model_dir: str | os.PathLike, timeout: float = 600) -> list[str]:
    """Load the folder as a Hub user would: a fresh process outside the project, offline, remote code only;
    then encode two categories and one product. Problems, or an empty list."""
    folder = Path(model_dir).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(scratch) / "modules"))
        try:
            done = subprocess.run(
                [sys.executable, "-c", LOAD_CHECK, str(folder)],
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return [f"loading the folder in a clean process took over {timeout:.0f} s"]
    if done.returncode != 0:
        error = (
            done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        )
        return [f"the folder does not load in a clean offline process: {error}"]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    problems = []
    if not report["module"].startswith("transformers_modules"):
        problems.append(f"the model class came from {report['module']}, not from the folder's code")
    if report["shapes"] != [[2, report["dim"]], [1, report["dim"]]]:
        problems.append(
            f"embeddings have shapes {report['shapes']}, expected [2, d] and [1, d] (d = {report['dim']})"
        )
    if not report["finite"] or any(abs(n - 1.0) > 1e-3 for n in report["norms"]):
        problems.append("embeddings are not finite and L2-normalised")
    return problems


def check_index_folder(index_dir: str | os.PathLike) -> list[str]:
    """A catalogue index folder (clipita.index layout) fit for a dataset repo: complete, no pickles or tokens."""
    folder = Path(index_dir)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    files = release_files(folder)
    problems = []
    if INDEX_MANIFEST not in files:
        problems.append(
            f"{INDEX_MANIFEST} is missing: the index was not saved completely (CatalogueIndex.save)"
        )
    pickles = find_pickles(folder, files)
    if pickles:
        problems.append(f"pickle-based files would be uploaded: {', '.join(pickles)}")
    return problems + scan_for_secrets(folder, files)


# ----- upload --------------------------------------------------------------------------------------------


class ReleaseError(RuntimeError):
    """The folder is not ready: the message lists every problem found."""

    def __init__(self, folder: str | os.PathLike, problems: list[str]):
        self.problems = problems
        super().__init__(f"{folder} is not ready for the Hub:\n" + "\n".join(f"  - {p}" for p in problems))


def push_folder(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload CLIP-ITA model",
    index_dir: str | os.PathLike | None = None,
    index_repo_id: str | None = None,
) -> dict[str, str]:
    """Check, then upload the model folder (and optionally the catalogue index as a dataset repo).

    Returns the commit URLs by repo kind. Nothing is uploaded when any check fails.
    """
    if (index_dir is None) != (index_repo_id is None):
        raise ValueError("give both index_dir and index_repo_id to upload the index, or neither")
    problems = check_release_folder(model_dir)
    if problems:
        raise ReleaseError(model_dir, problems)
    if index_dir is not None:
        index_problems = check_index_folder(index_dir)
        if index_problems:
            raise ReleaseError(index_dir, index_problems)

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(model_dir),
        ignore_patterns=IGNORE_PATTERNS,
        commit_message=commit_message,
    )
    urls = {"model": str(getattr(commit, "commit_url", commit))}
    if index_dir is not None:
        api.create_repo(index_repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=index_repo_id,
            folder_path=str(index_dir),
            repo_type="dataset",
            ignore_patterns=IGNORE_PATTERNS,
            commit_message=f"Upload the catalogue index of {repo_id}",
        )
        urls["index"] = str(getattr(commit, "commit_url", commit))
    return urls


__all__ = [
    "IGNORE_PATTERNS",
    "ReleaseError",
    "check_index_folder",
    "check_model_card",
    "check_release_folder",
    "find_pickles",
    "load_check",
    "push_folder",
    "release_files",
    "scan_for_secrets",
]
