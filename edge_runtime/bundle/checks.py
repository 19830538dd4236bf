"""Checks that a bundle's manifest tells the truth about its folder, run whenever a bundle is opened.

A bundle is its folder and nothing outside it, and a manifest that lies is refused with one line naming the
entry, before anything is mapped or any session made:
- Paths: every file the manifest names (the keys of `files`, `weights.file`, `graphs.*.file`,
  `tokenizer.files`) is a plain name of a regular file in the folder (no separator, no `..`, no symlink
  leaving it) whose size is the one listed; the files the runtime opens are all among those `files` hashes.
- The weight table: names unique; each dtype one the runtime maps; shape non-negative integers; nbytes
  exactly shape x item size; the bytes inside the weights file, at an offset aligned to the item size.
- Limits: max_context within the config's max_position_embeddings and MAX_CONTEXT, max_batch within MAX_BATCH;
  the weight format's fields of the kinds the memory planner reads.
- The state layout: the fields StateSpec has, dtypes the state pool holds, positive dims, unique names; and
  exactly the layout the config makes (state_layout.state_layout), so the config's dims are the graphs'.
- The graphs (their declarations, read by onnx_header): every initializer stored outside a graph is a tensor
  of the table, and every tensor of the table an initializer of a graph, with the same element type, dims,
  file, offset and length; each graph's inputs and outputs are exactly what the runtime binds (the
  fixed inputs, the state layout's past/present tensors, logits over the vocabulary) and what the manifest lists.
All arithmetic is on Python ints, so no value overflows into a passing check.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Any

from edge_runtime.bundle.memory_plan import WEIGHT_FORMATS
from edge_runtime.bundle.model_config import ConfigError, ModelConfig
from edge_runtime.bundle.onnx_header import ITEM_BYTES, ONNX_TYPES, TYPE_NAMES, OnnxHeaderError, ValueDecl, read_header
from edge_runtime.bundle.state_layout import DTYPE_BYTES, NP_DTYPE, StateSpec, state_layout

GRAPHS = ("prefill", "decode")
# Rows of one model call. Each is a sequence with its whole state (142 MB of SSM state alone at full size),
# so past this no board holds the batch, whatever the memory plan would later say.
MAX_BATCH = 256
# Tokens of one sequence: the API carries the limit as uint32 (ModelInfo.max_context).
MAX_CONTEXT = 2**32 - 1
# The graphs carry structure and small constants; their weights live in the weights file.
MAX_GRAPH_BYTES = 256 * 1024**2
STATE_KINDS = ("conv", "ssm", "key", "value")
# Dims of a graph's inputs and outputs the runtime varies from call to call (they must be symbolic), and
# the ones it always binds as 1 (decode's new token: 1 or symbolic).
VARIES, ONE = "varies", "one"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file or field."""


_short = reprlib.Repr()  # a manifest's values in a message: one line of bounded length, whatever they hold
_short.maxstring = _short.maxother = 120
_short.maxlist = _short.maxdict = 8


def _r(value: Any) -> str:
    return _short.repr(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _named(value: Any, names) -> bool:
    """`value` is one of `names` (strings): no other type compares, or hashes, its way in."""
    return isinstance(value, str) and value in names


def _need(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BundleError(f"{where}: expected {names}, got {_r(value)}")
    return value


def bundle_file(root: Path, name: Any, where: str) -> Path:
    """`root / name` when `name` is a plain name of a regular file in the folder `root`."""
    # one path component, at most NAME_MAX (255) long, that walks nowhere else
    if not isinstance(name, str) or name in ("", ".", "..") or len(name) > 255 or any(c in name for c in "/\\\0"):
        raise BundleError(f"{where}: {_r(name)} is not a plain file name in the bundle folder")
    path = root / name
    try:
        real, inside = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise BundleError(f"{where}: {path} cannot be resolved ({e})") from None
    if not real.is_relative_to(inside):
        raise BundleError(f"{where}: {path} is a link to {real}, outside the bundle folder")
    if not real.exists():
        raise BundleError(f"{where}: {path} is listed in the manifest but missing")
    if not real.is_file():
        raise BundleError(f"{where}: {path} is not a regular file")
    return path


def check_manifest(root: Path, manifest: dict[str, Any]) -> ModelConfig:
    """Everything but the graphs; returns the parsed config."""
    try:
        config = ModelConfig.from_hf_dict(_need(manifest["config"], dict, "config"))
    except ConfigError as e:
        raise BundleError(f"config: {e}") from None
    files = _need(manifest["files"], dict, "files")
    sizes = {}
    for name, entry in files.items():
        where = f"files[{_r(name)}]"
        path = bundle_file(root, name, where)
        _need(entry, dict, where)
        _need(entry.get("sha256"), str, f"{where}.sha256")
        listed = _need(entry.get("bytes"), int, f"{where}.bytes")
        sizes[name] = path.stat().st_size
        if sizes[name] != listed:
            raise BundleError(f"{where}: {path} has size {sizes[name]}, not the manifest's {listed}; the file was modified")

    def hashed(name: Any, where: str) -> str:
        bundle_file(root, name, where)
        if name not in files:
            raise BundleError(f"{where}: {_r(name)} is not among the files the manifest hashes")
        return name

    graphs = _need(manifest["graphs"], dict, "graphs")
    for g in GRAPHS:
        entry = _need(graphs.get(g), dict, f"graphs.{g}")
        hashed(entry.get("file"), f"graphs.{g}.file")
        _need(entry.get("inputs"), list, f"graphs.{g}.inputs")
        _need(entry.get("outputs"), list, f"graphs.{g}.outputs")
    tokenizer = manifest.get("tokenizer")
    if tokenizer is not None:
        _need(tokenizer, dict, "tokenizer")
        for i, name in enumerate(_need(tokenizer.get("files", []), list, "tokenizer.files")):
            hashed(name, f"tokenizer.files[{i}]")
        _need(tokenizer.get("chat_template"), (str, type(None)), "tokenizer.chat_template")
    weights = _need(manifest["weights"], dict, "weights")
    if not _named(weights.get("format"), WEIGHT_FORMATS):
        raise BundleError(f"weights.format: {_r(weights.get('format'))} is not one of {', '.join(WEIGHT_FORMATS)}")
    group = weights.get("group_size")
    if group is not None and not (is_int(group) and 0 < group and group.bit_length() <= 32):  # uint32 in ModelInfo
        raise BundleError(f"weights.group_size: {_r(group)} is not a positive 32-bit integer")
    if not _named(weights.get("activation_dtype"), DTYPE_BYTES):
        raise BundleError(f"weights.activation_dtype: {_r(weights.get('activation_dtype'))} is not one of "
                          f"{', '.join(DTYPE_BYTES)}")
    for key in ("quantize_lm_head", "quantize_embeddings"):
        _need(weights.get(key, False), bool, f"weights.{key}")
    check_weight_table(_need(weights.get("tensors"), list, "weights.tensors"),
                       sizes[hashed(weights.get("file"), "weights.file")])
    _check_limits(_need(manifest["limits"], dict, "limits"), config)
    _check_state_layout(_need(manifest["state_layout"], list, "state_layout"), config, weights["activation_dtype"])
    return config


def check_weight_table(tensors: list[Any], file_bytes: int) -> None:
    """Every entry of `tensors` lies inside a weights file of `file_bytes` bytes, as the dtype and shape it names."""
    seen: set[str] = set()
    for i, t in enumerate(tensors):
        where = f"weights.tensors[{i}]"
        _need(t, dict, where)
        name = _need(t.get("name"), str, f"{where}.name")
        where = f"{where} ({_r(name)})"
        if name in seen:
            raise BundleError(f"{where}: the name appears twice in the weight table")
        seen.add(name)
        dtype = t.get("dtype")
        if not _named(dtype, ITEM_BYTES):
            raise BundleError(f"{where}: dtype {_r(dtype)} is not one of {', '.join(ITEM_BYTES)}")
        shape = _need(t.get("shape"), list, f"{where}.shape")
        if not all(is_int(d) and d >= 0 for d in shape):
            raise BundleError(f"{where}: shape {_r(shape)} is not a list of non-negative integers")
        offset, nbytes = t.get("offset"), t.get("nbytes")
        if not is_int(offset) or offset < 0:
            raise BundleError(f"{where}: offset {_r(offset)} is not a non-negative integer")
        if not is_int(nbytes) or nbytes != math.prod(shape) * ITEM_BYTES[dtype]:
            raise BundleError(f"{where}: nbytes {_r(nbytes)} is not its shape {_r(shape)} of {dtype} "
                              f"({math.prod(shape) * ITEM_BYTES[dtype]} bytes)")
        if offset % ITEM_BYTES[dtype]:
            raise BundleError(f"{where}: offset {offset} is not a multiple of the {ITEM_BYTES[dtype]} bytes of {dtype}")
        if offset + nbytes > file_bytes:
            raise BundleError(f"{where}: bytes {offset}..{offset + nbytes} run past the end of the weights file "
                              f"({file_bytes} bytes)")


def _check_limits(limits: dict[str, Any], config: ModelConfig) -> None:
    context_top, context_why = min((config.max_position_embeddings, "the config's max_position_embeddings"),
                                   (MAX_CONTEXT, "the runtime's ceiling"))
    for key, top, why in (("max_context", context_top, context_why), ("max_batch", MAX_BATCH, "the runtime's ceiling")):
        value = limits.get(key)
        if not is_int(value) or not 1 <= value <= top:
            raise BundleError(f"limits.{key}: {_r(value)} is not between 1 and {top} ({why})")


def _check_state_layout(layout: list[Any], config: ModelConfig, activation_dtype: str) -> None:
    fields = set(StateSpec.__dataclass_fields__)
    names: set[str] = set()
    for i, d in enumerate(layout):
        where = f"state_layout[{i}]"
        _need(d, dict, where)
        if set(d) - fields or not {"name", "layer", "kind", "shape", "dtype"} <= set(d):
            raise BundleError(f"{where}: fields {_r(sorted(d))} are not StateSpec's {sorted(fields)}")
        name = _need(d["name"], str, f"{where}.name")
        if not name.startswith("past.") or name in names:
            raise BundleError(f"{where}: name {_r(name)} is not a unique 'past.' name")
        names.add(name)
        _need(d["layer"], int, f"{where}.layer")
        per_token = _need(d.get("per_token", False), bool, f"{where}.per_token")
        if not _named(d["kind"], STATE_KINDS):
            raise BundleError(f"{where}: kind {_r(d['kind'])} is not one of {', '.join(STATE_KINDS)}")
        if not _named(d["dtype"], NP_DTYPE):
            raise BundleError(f"{where}: dtype {_r(d['dtype'])} is not one the state pool holds ({', '.join(NP_DTYPE)})")
        shape = _need(d["shape"], list, f"{where}.shape")
        if not all(is_int(n) and n > 0 for n in shape):
            raise BundleError(f"{where}: shape {_r(shape)} is not a list of positive integers")
        if per_token and (len(shape) != 3 or shape[1] != 1):
            raise BundleError(f"{where}: shape {shape} of K/V is not [kv_heads, 1, head_dim]")
    made = [s.to_dict() for s in state_layout(config, activation_dtype)]
    listed = [StateSpec.from_dict(d).to_dict() for d in layout]
    if listed != made:
        i = _first_difference(listed, made)
        raise BundleError(f"state_layout[{i}]: the manifest lists {_r(_at(listed, i))}, the config makes {_r(_at(made, i))}")


def check_graphs(root: Path, manifest: dict[str, Any], config: ModelConfig) -> None:
    """The graphs against the manifest's weight table, state layout and I/O (after check_manifest)."""
    weights = manifest["weights"]
    table = {t["name"]: t for t in weights["tensors"]}
    specs = [StateSpec.from_dict(d) for d in manifest["state_layout"]]
    used: set[str] = set()
    for g in GRAPHS:
        entry = manifest["graphs"][g]
        path = root / entry["file"]
        try:
            header = read_header(path, MAX_GRAPH_BYTES)
        except OnnxHeaderError as e:
            raise BundleError(f"graphs.{g}.file: {path}: {e}") from None
        for init in header.initializers:
            t = table.get(init.name)
            where = f"graphs.{g} ({path.name}): initializer {_r(init.name)}"
            if t is None:
                if init.external is not None:
                    raise BundleError(f"{where} is stored outside the graph but not in the manifest's weight table")
                continue
            used.add(init.name)
            if init.elem_type != ONNX_TYPES[t["dtype"]] or list(init.dims) != t["shape"]:
                raise BundleError(f"{where} is {_type_name(init.elem_type)} {list(init.dims)}; the weight table "
                                  f"says {t['dtype']} {t['shape']}")
            if init.external is None:
                continue
            for key, value in (("location", weights["file"]), ("offset", str(t["offset"])), ("length", str(t["nbytes"]))):
                if init.external.get(key) != value:
                    raise BundleError(f"{where} has external data {key} {_r(init.external.get(key))}; the weight "
                                      f"table says {value!r}")
        for kind, declared in (("inputs", header.inputs), ("outputs", header.outputs)):
            listed = [{"name": v.name, "dtype": _type_name(v.elem_type), "shape": list(v.dims)} for v in declared]
            if entry[kind] != listed:
                i = _first_difference(entry[kind], listed)
                raise BundleError(f"graphs.{g}.{kind}[{i}]: the manifest lists {_r(_at(entry[kind], i))}, "
                                  f"{path.name} declares {_r(_at(listed, i))}")
            _check_interface(f"{path.name} {kind}", declared, _runtime_interface(g, kind, specs, config.vocab_size))
    unused = [name for name in table if name not in used]
    if unused:
        raise BundleError(f"weights.tensors: {_r(unused[0])} is not an initializer of "
                          f"{' or '.join(manifest['graphs'][g]['file'] for g in GRAPHS)}")


def _type_name(elem_type: int) -> str:
    return TYPE_NAMES.get(elem_type, f"onnx type {elem_type}")


def _runtime_interface(graph: str, kind: str, specs: list[StateSpec], vocab: int) -> dict[str, tuple[str, list]]:
    """What OrtModelRunner binds to `graph`'s inputs or outputs: name -> (dtype, dims)."""
    if kind == "inputs":
        out = {"input_ids": ("int64", [VARIES, ONE if graph == "decode" else VARIES])}
        if graph == "prefill":
            out["lengths"] = ("int64", [VARIES])
        out["past_lengths"] = ("int64", [VARIES])
    else:
        out = {"logits": ("float32", [VARIES, vocab])}
    for s in specs:
        dims: list = [VARIES, *s.shape]
        if s.per_token:  # the slot's K/V buffer, its capacity chosen by the runtime; past and present alike
            dims[2] = VARIES
        out[s.name if kind == "inputs" else s.output_name] = (s.dtype, dims)
    return out


def _check_interface(where: str, declared: list[ValueDecl], wanted: dict[str, tuple[str, list]]) -> None:
    have = {v.name: v for v in declared}
    extra = sorted(have.keys() - wanted.keys())
    if extra:
        raise BundleError(f"{where}: {_r(extra[0])} is not one the runtime binds (the state layout has no such tensor)")
    for name, (dtype, dims) in wanted.items():
        v = have.get(name)
        if v is None:
            raise BundleError(f"{where}: no {name!r}, which the state layout (or the runtime) needs")
        if _type_name(v.elem_type) != dtype or len(v.dims) != len(dims) \
                or not all(_dim_fits(d, w) for d, w in zip(v.dims, dims)):
            shown = ["*" if w in (VARIES, ONE) else w for w in dims]
            raise BundleError(f"{where}: {name!r} is {_type_name(v.elem_type)} {list(v.dims)}; the state layout "
                              f"and config make it {dtype} {shown}")


def _dim_fits(declared: int | str | None, wanted: int | str) -> bool:
    if wanted == VARIES:
        return isinstance(declared, str)
    if wanted == ONE:
        return declared == 1 or isinstance(declared, str)
    return declared == wanted


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _at(items: list, i: int) -> Any:
    return items[i] if i < len(items) else None
