"""A bundle is its folder and nothing outside it, and a manifest that lies about it is refused (issue 16).

Each class of lie, as a deliberate writer makes it (the manifest re-sealed, the listed hashes right):
- paths: a manifest entry naming a file outside the folder (`..`, absolute, a symlink out), a file it does
  not hash, or something that is not a regular file;
- the weight table: offsets negative, misaligned or past the file's end, lengths, dtypes and shapes that do
  not match the tensor or the graph's own initializer, names missing, doubled or unused;
- the state layout and graph I/O: dtypes, shapes and names the graphs do not declare;
- limits beyond the config (max_position_embeddings) or the runtime's batch ceiling;
- a pool that the memory available cannot hold, with no budget to plan it.
All are refused with one line naming the entry, before anything is mapped or allocated. Cases that once
crashed the process (SIGSEGV) run in a subprocess, so a regression fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_edit import copy_bundle, edit_manifest, tensor
from edge_runtime.bundle.reader import MANIFEST_FILE, BundleError, open_bundle, sha256_file, write_manifest
from edge_runtime.engine.chat import Chat
from edge_runtime.cli import build_parser
from edge_runtime.commands import generate as generate_command
from edge_runtime.doctor import FAIL, DoctorContext, check_bundle
from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.bundle.memory_plan import MemoryPlanError, plan_for_bundle
from edge_runtime.bundle.model_config import ModelConfig
from edge_runtime.engine.runner import WeightMap
from edge_runtime.engine.records import RequestError
from edge_runtime.service.config import ServiceConfig
from edge_runtime.bundle.state_layout import state_layout
from edge_server_process import ServerProcess
from nemotron_jetson.detect import detect

NORM = "backbone.layers.0.norm.weight"  # float32 [hidden]: shape lies keep its bytes
EMBED = "backbone.embeddings.weight"  # the first tensor, at offset 0


@pytest.fixture
def lying(tiny_bundle: Path, tmp_path: Path):
    """A copy of the tiny bundle with `edit` applied to its manifest."""
    (tmp_path / "copies").mkdir()
    def make(edit=None) -> Path:
        bundle = copy_bundle(tiny_bundle, tmp_path / "copies")
        if edit is not None:
            edit_manifest(bundle, edit)
        return bundle
    return make


@pytest.fixture
def outside(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A folder beside the bundle holding copies of its files (same bytes, same hashes)."""
    out = Path(shutil.copytree(tiny_bundle, tmp_path / "outside"))
    (out / MANIFEST_FILE).unlink()
    return out


def refusal(bundle: Path, verify: bool = True) -> str:
    with pytest.raises(BundleError) as info:
        open_bundle(bundle, verify=verify)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], capture_output=True, text=True,
                          timeout=300)


def listed(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


# ---- paths ---------------------------------------------------------------------------------------------------


PATH_LIES = {
    "weights.file": lambda m, out: m["weights"].update(file="../outside/weights.bin"),
    "weights.file absolute": lambda m, out: m["weights"].update(file=str(out / "weights.bin")),
    "graphs.decode.file": lambda m, out: m["graphs"]["decode"].update(file=str(out / "decode.onnx")),
    "graphs.prefill.file": lambda m, out: m["graphs"]["prefill"].update(file="../outside/prefill.onnx"),
    "files absolute": lambda m, out: m["files"].update({str(out / "tokenizer.json"): listed(out / "tokenizer.json")}),
    "files ..": lambda m, out: m["files"].update({"../outside/weights.bin": listed(out / "weights.bin")}),
    "tokenizer.files": lambda m, out: m["tokenizer"]["files"].append("../outside/tokenizer.json"),
}


@pytest.mark.parametrize("entry", PATH_LIES)
def test_a_path_leaving_the_folder_is_refused_naming_the_entry(lying, outside, entry):
    """Before: every one was opened (a `files` entry outside was hashed, and the bundle reported verified)."""
    msg = refusal(lying(lambda m: PATH_LIES[entry](m, outside)))
    assert entry.split(" ")[0] in msg and "not a plain file name" in msg, msg


@pytest.mark.parametrize("name", ["weights.bin", "decode.onnx", "tokenizer.json"])
def test_a_symlink_leaving_the_folder_is_refused(lying, outside, name):
    bundle = lying()
    (bundle / name).unlink()
    (bundle / name).symlink_to(outside / name)  # the same bytes: only where they live is wrong
    msg = refusal(bundle)
    assert f"files[{name!r}]" in msg and "outside the bundle folder" in msg, msg


def test_a_symlink_inside_the_folder_is_followed(lying):
    bundle = lying()
    (bundle / "weights.bin").rename(bundle / "weights.data")
    (bundle / "weights.bin").symlink_to("weights.data")
    open_bundle(bundle)


def test_a_file_the_runtime_opens_must_be_hashed(lying):
    bundle = lying(lambda m: m["weights"].update(file="unlisted.bin"))
    shutil.copyfile(bundle / "weights.bin", bundle / "unlisted.bin")
    msg = refusal(bundle)
    assert "weights.file" in msg and "not among the files the manifest hashes" in msg, msg


def test_a_listed_directory_is_not_a_file(lying):
    """Before: hashing it raised IsADirectoryError."""
    bundle = lying()
    (bundle / "sub").mkdir()
    edit_manifest(bundle, lambda m: m["files"].update(sub={"sha256": "0" * 64, "bytes": (bundle / "sub").stat().st_size}))
    msg = refusal(bundle)
    assert "files['sub']" in msg and "not a regular file" in msg, msg


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_tokenizer_file_that_is_not_one_is_named(lying, name):
    """Before: the tokenizers library's Exception (or json's error), uncaught, from generate and chat."""
    bundle = lying()
    (bundle / name).write_text("[1, 2")
    edit_manifest(bundle, lambda m: m["files"].update({name: listed(bundle / name)}))
    with pytest.raises(BundleError, match=f"{name}: not"):
        Chat(Engine(bundle))


def test_doctor_fails_a_bundle_listing_a_file_outside(lying, outside):
    bundle = lying(lambda m: PATH_LIES["files absolute"](m, outside))
    result = check_bundle(DoctorContext(config=ServiceConfig(bundle=bundle), jetson=detect("/")))
    assert result.status == FAIL and "not a plain file name" in result.detail, result


def test_write_manifest_refuses_a_symlink_out(tmp_path, outside):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "weights.bin").symlink_to(outside / "weights.bin")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        write_manifest(folder, {})
    assert not (folder / MANIFEST_FILE).exists()


# ---- any value ------------------------------------------------------------------------------------------------


HOSTILE = [None, True, -1, 2**70, 1.5, "../x", [], {"a": None}]


def _places(value, at: tuple = ()):
    """Every place in a manifest; one element of each list stands for the rest."""
    yield at
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*at, key))
    elif isinstance(value, list) and value:
        yield from _places(value[0], (*at, 0))


def test_any_manifest_value_replaced_is_refused_by_name_or_harmless(lying):
    """Every place in the manifest, given each hostile value: open_bundle refuses it with a BundleError, or
    what the runtime derives from the bundle (config, state layout, special tokens, memory plan) still works."""
    bundle = lying()
    original = json.loads((bundle / MANIFEST_FILE).read_text())
    problems = []
    for at in _places(original):
        if not at or at == ("manifest_sha256",):
            continue
        for value in HOSTILE:
            def put(m: dict) -> None:
                node = m
                for key in at[:-1]:
                    node = node[key]
                node[at[-1]] = value
            (bundle / MANIFEST_FILE).write_text(json.dumps(original))
            edit_manifest(bundle, put)
            try:
                opened = open_bundle(bundle, verify=False)
                opened.config.eos_token_ids, opened.state_layout, opened.special_tokens, opened.identity
                plan_for_bundle(opened, 2**30, 64)
            except (BundleError, MemoryPlanError):
                continue
            except Exception as e:  # noqa: BLE001 - the point: nothing else may escape
                problems.append(f"{at} = {value!r}: {type(e).__name__}: {e}")
    assert not problems, "\n".join(problems)


# ---- the weight table ----------------------------------------------------------------------------------------


def _move(m: dict, name: str, offset) -> None:
    tensor(m, name)["offset"] = offset


def _file_end(m: dict) -> int:
    return m["files"]["weights.bin"]["bytes"]


TABLE_LIES = {
    "negative offset": (lambda m: _move(m, NORM, -64), "offset -64"),
    "large negative offset": (lambda m: _move(m, NORM, -10**12), "offset"),
    "offset past the end": (lambda m: _move(m, NORM, _file_end(m) - 256), "past the end"),
    "offset far past the end": (lambda m: _move(m, EMBED, 2**63), "past the end"),
    "misaligned offset": (lambda m: _move(m, NORM, tensor(m, NORM)["offset"] + 2), "multiple"),
    "offset not an integer": (lambda m: _move(m, NORM, 64.0), "offset"),
    "nbytes longer than the shape": (lambda m: tensor(m, NORM).update(nbytes=tensor(m, NORM)["nbytes"] + 4), "nbytes"),
    "unknown dtype": (lambda m: tensor(m, NORM).update(dtype="complex64"), "dtype"),
    "object dtype": (lambda m: tensor(m, NORM).update(dtype="O"), "dtype"),
    "negative dim": (lambda m: tensor(m, NORM).update(shape=[-1, 128]), "shape"),
    "shape the graph does not have": (lambda m: tensor(m, NORM).update(shape=[64, 2]), "the weight table says float32 [64, 2]"),
    "dtype the graph does not have": (lambda m: tensor(m, NORM).update(dtype="float16", shape=[256]), "float16 [256]"),
    "name twice": (lambda m: m["weights"]["tensors"].append(dict(tensor(m, NORM))), "twice"),
    "renamed": (lambda m: tensor(m, NORM).update(name="not.in.the.graph"), "not in the manifest's weight table"),
    "unused": (lambda m: m["weights"]["tensors"].append(
        {"name": "extra", "offset": 0, "nbytes": 4, "dtype": "float32", "shape": [1]}), "not an initializer"),
    "moved to another tensor's bytes": (lambda m: _move(m, NORM, tensor(m, "backbone.layers.3.norm.weight")["offset"]),
                                        "external data offset"),
}


@pytest.mark.parametrize("lie", TABLE_LIES)
def test_a_weight_table_lie_is_refused_at_open(lying, lie):
    edit, words = TABLE_LIES[lie]
    msg = refusal(lying(edit))
    assert "weights.tensors" in msg or "initializer" in msg, msg
    assert words in msg, msg


def test_a_large_negative_offset_no_longer_crashes_generate(lying):
    """Before: SIGSEGV inside prefill."""
    bundle = lying(TABLE_LIES["large negative offset"][0])
    out = cli("generate", "--bundle", str(bundle), "--token-ids", "1,2,3", "--max-new-tokens", "2", "--json")
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert out.stderr.count("\n") == 1 and f"weights.tensors[1] ({NORM!r}): offset" in out.stderr, out.stderr


def test_a_large_negative_offset_ends_serve_cleanly(lying, tmp_path):
    """Before: SIGSEGV during warm-up, leaving a stale socket."""
    bundle = lying(TABLE_LIES["large negative offset"][0])
    with ServerProcess(tmp_path / "server", bundle) as server:
        code = server.wait()
        assert code == 1, server.log()
        assert "cannot load" in server.log() and "offset" in server.log(), server.log()
        assert not server.socket_path.exists()


def test_weights_are_checked_against_the_file_as_mapped(lying):
    """A weights file that shrank after the bundle was opened."""
    bundle_dir = lying()
    bundle = open_bundle(bundle_dir, verify=False)
    weights = bundle_dir / "weights.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BundleError, match="past the end of the weights file"):
        WeightMap(bundle)


# ---- the state layout and the graphs' inputs and outputs -----------------------------------------------------


def _spec(m: dict, name: str) -> dict:
    return next(s for s in m["state_layout"] if s["name"] == name)


def _layout_from_config(config: dict | None = None, activation_dtype: str | None = None):
    """An edit of the config (or activation dtype) with the state layout it makes: manifest and config agree,
    so only the graphs can tell the lie."""
    def edit(m: dict) -> None:
        m["config"].update(config or {})
        m["weights"]["activation_dtype"] = activation_dtype or m["weights"]["activation_dtype"]
        made = state_layout(ModelConfig.from_hf_dict(m["config"]), m["weights"]["activation_dtype"])
        m["state_layout"] = [s.to_dict() for s in made]
    return edit


STATE_LIES = {
    "ssm dtype": (lambda m: _spec(m, "past.0.ssm").update(dtype="float16"), "state_layout[1]: the manifest lists"),
    "conv shape": (lambda m: _spec(m, "past.3.conv")["shape"].__setitem__(0, 300), "state_layout[4]"),
    "K/V not per token": (lambda m: _spec(m, "past.2.key").update(per_token=False), "state_layout[2]"),
    "a state dropped": (lambda m: m["state_layout"].pop(), "state_layout[9]: the manifest lists None"),
    "a state renamed": (lambda m: _spec(m, "past.5.ssm").update(name="past.5.ssm2"), "state_layout[7]"),
    "a state dtype the pool cannot hold": (lambda m: _spec(m, "past.0.conv").update(dtype="bfloat16"),
                                           "dtype 'bfloat16' is not one the state pool holds"),
    "an unknown field": (lambda m: _spec(m, "past.0.conv").update(extra=1), "fields"),
    "config and layout: ssm_state_size": (_layout_from_config({"ssm_state_size": 8}),
                                          "prefill.onnx inputs: 'past.0.conv' is float32 ['batch', 320, 3]"),
    "config and layout: float16 states": (_layout_from_config(activation_dtype="float16"),
                                          "prefill.onnx inputs: 'past.0.conv' is float32"),
    "config and layout: one more KV head": (_layout_from_config({"num_key_value_heads": 4}),
                                            "'past.2.key' is float32 ['batch', 2, 'kv_capacity', 32]"),
    "graph inputs listed wrong": (lambda m: m["graphs"]["decode"]["inputs"][0].update(name="ids"), "graphs.decode.inputs[0]"),
    "logits over another vocabulary": (lambda m: m["config"].update(vocab_size=1000), "'logits' is float32 ['batch', 1024]"),
}


@pytest.mark.parametrize("lie", STATE_LIES)
def test_a_state_layout_or_io_lie_is_refused_at_open(lying, lie):
    edit, words = STATE_LIES[lie]
    msg = refusal(lying(edit), verify=False)
    assert words in msg, msg


def test_a_state_layout_lie_is_named_by_generate(lying):
    """Before: `generate --json` ended with finish_reason "error" and no message."""
    bundle = lying(STATE_LIES["ssm dtype"][0])
    out = cli("generate", "--bundle", str(bundle), "--token-ids", "1,2,3", "--max-new-tokens", "2", "--json")
    assert out.returncode == 2 and "past.0.ssm" in out.stderr and "float16" in out.stderr, (out.returncode, out.stderr)


def test_a_failed_model_call_is_reported_with_its_error(tiny_bundle, capsys):
    """A generation that fails for a reason no load check sees (here: decode running the prefill graph, which
    wants inputs decode does not give) still says why, in the JSON and on stderr."""
    engine = Engine(tiny_bundle)
    engine.runner.replace_session("decode", engine.runner.sessions["prefill"])
    args = build_parser().parse_args(["generate", "--token-ids", "1,2,3", "--max-new-tokens", "3", "--json"])
    assert generate_command.generate(engine, args) == 1
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["finish_reason"] == "error" and "model call failed" in record["error"], record
    assert "model call failed" in captured.err


# ---- limits and memory ---------------------------------------------------------------------------------------


LIMIT_LIES = {
    "max_context beyond max_position_embeddings": ("max_context", 4097),
    "max_context 10**7": ("max_context", 10**7),
    "max_context 10**12": ("max_context", 10**12),
    "max_context 0": ("max_context", 0),
    "max_context a string": ("max_context", "512"),
    "max_context true": ("max_context", True),
    "max_batch 10**6": ("max_batch", 10**6),
    "max_batch 0": ("max_batch", 0),
    "max_batch fractional": ("max_batch", 2.5),
}


@pytest.mark.parametrize("lie", LIMIT_LIES)
def test_limits_beyond_the_config_are_refused_at_open(lying, lie):
    key, value = LIMIT_LIES[lie]
    msg = refusal(lying(lambda m: m["limits"].update({key: value})), verify=False)
    assert f"limits.{key}" in msg and "is not between 1 and" in msg, msg


def test_the_context_has_a_ceiling_whatever_the_config_says(lying):
    def edit(m: dict) -> None:
        m["config"]["max_position_embeddings"] = 2**40
        m["limits"]["max_context"] = 2**32
    msg = refusal(lying(edit), verify=False)
    assert "limits.max_context: 4294967296 is not between 1 and 4294967295 (the runtime's ceiling)" in msg, msg


def _huge_context(m: dict) -> None:
    """A config that allows a context no memory holds, and limits that take it."""
    m["config"]["max_position_embeddings"] = m["limits"]["max_context"] = 2**32 - 1


def test_no_budget_still_refuses_what_memory_cannot_hold(lying):
    """Before: numpy's _ArrayMemoryError, uncaught."""
    bundle = lying(_huge_context)
    open_bundle(bundle)  # within its own config
    with pytest.raises(RequestError, match=r"memory: 8 sequence\(s\) of 4294967295 tokens .* is available"):
        Engine(bundle)
    with pytest.raises(RequestError, match="memory: 1000000000 sequence"):
        Engine(lying(), EngineConfig(max_sequences=10**9))


def test_generate_refuses_what_memory_cannot_hold_with_a_message(lying):
    out = cli("generate", "--bundle", str(lying(_huge_context)), "--token-ids", "1,2,3", "--json")
    assert out.returncode == 2 and out.stderr.startswith("nemotron-edge generate: memory: "), (out.returncode, out.stderr)


@pytest.mark.parametrize("field,value", [("max_context", -5), ("max_batch", 0), ("max_sequences", -1),
                                         ("memory_budget", 0), ("max_context", 2.5)])
def test_engine_config_values_must_be_positive_integers(tiny_bundle, field, value):
    with pytest.raises(RequestError, match=f"^{field}: must be a positive integer"):
        Engine(tiny_bundle, EngineConfig(**{field: value}))


def test_the_exporter_writes_no_batch_the_runtime_refuses():
    from nemotron_export.bundle import ExportOptions

    with pytest.raises(ValueError, match="--max-batch: must be between 1 and"):
        ExportOptions(max_batch=10**6)
