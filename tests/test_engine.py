"""The engine end to end on real bundles: parity with transformers' generate(), batching invariance,
slot reuse, memory, and admission under a budget."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from edge_runtime.engine.engine import Engine, EngineConfig
from edge_runtime.engine.providers import ProviderConfig
from edge_runtime.engine.records import Delta, GenerationRequest, Priority, QueueFullError, RequestError
from edge_runtime.engine.sampler import SamplingParams
from edge_runtime.engine.scheduler import SchedulerConfig
from nemotron_export.bundle import ExportOptions, export_bundle

transformers = pytest.importorskip("transformers")

GREEDY = SamplingParams(greedy=True)


def prompt(seed: int, n: int, vocab: int = 1000) -> list[int]:
    return [int(t) for t in np.random.RandomState(seed).randint(5, vocab, n)]


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> Engine:
    return Engine(tiny_bundle)


def test_greedy_matches_transformers_generate(tmp_path):
    """A bundle exported from transformers' own random NemotronHForCausalLM generates the same 32 tokens."""
    torch.manual_seed(3)
    cfg = transformers.NemotronHConfig(
        vocab_size=300, hidden_size=64, layers_block_type=["mamba", "attention", "mlp", "mamba", "mlp"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, mamba_num_heads=8, mamba_head_dim=16,
        n_groups=2, ssm_state_size=16, chunk_size=8, intermediate_size=128)
    hf = transformers.NemotronHForCausalLM(cfg).eval()
    with torch.no_grad():  # dt well above time_step_min, where transformers' prefill and decode agree
        for layer in hf.model.layers:
            if layer.block_type == "linear_attention":
                dt = torch.empty_like(layer.mixer.dt_bias).uniform_(0.01, 0.1)
                layer.mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    hf.save_pretrained(tmp_path / "ckpt")
    bundle = export_bundle(tmp_path / "ckpt", tmp_path / "bundle", progress=False)
    engine = Engine(bundle)
    for seed, n in ((0, 5), (1, 19)):
        ids = prompt(seed, n, 300)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                              pad_token_id=0)[0, n:].tolist()
        final = engine.generate(GenerationRequest(ids, GREEDY, max_tokens=32, ignore_eos=True))
        assert final.token_ids == ref, f"prompt of {n} tokens"
        assert final.finish_reason == "length"


def test_batched_equals_alone_and_after_slot_reuse(engine):
    """A greedy request gives identical tokens alone, batched with 7 others of different lengths, and
    in a slot another request used before (fp32)."""
    target = GenerationRequest(prompt(42, 13), GREEDY, max_tokens=24, ignore_eos=True)
    alone = engine.generate(target).token_ids
    others = [GenerationRequest(prompt(i, 3 + 9 * i), GREEDY, max_tokens=10 + 3 * i, ignore_eos=True) for i in range(7)]
    handles = [engine.submit(r) for r in others[:3]] + [engine.submit(target)] + [engine.submit(r) for r in others[3:]]
    engine.run_until_done()
    batched = handles[3].final.token_ids
    assert batched == alone, first_difference(alone, batched)
    # Every slot has now held some other sequence: run the target again.
    again = engine.generate(GenerationRequest(prompt(42, 13), GREEDY, max_tokens=24, ignore_eos=True)).token_ids
    assert again == alone


def first_difference(a: list[int], b: list[int]) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return f"first difference at position {k}: {a[k] if k is not None else None} vs {b[k] if k is not None else None}"


def test_seeded_sampling_is_reproducible_in_any_batch(engine):
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=1234)
    req = lambda: GenerationRequest(prompt(7, 9), params, max_tokens=20, ignore_eos=True)
    alone = engine.generate(req()).token_ids
    handles = [engine.submit(GenerationRequest(prompt(i, 4 + i), SamplingParams(temperature=1.0), max_tokens=15))
               for i in range(5)]
    h = engine.submit(req())
    engine.run_until_done()
    assert h.final.token_ids == alone


def test_stop_strings_stop_tokens_and_streaming(engine):
    base = engine.generate(GenerationRequest(prompt(5, 8), GREEDY, max_tokens=30, ignore_eos=True))
    # Stop on the 6th generated token's id: generation ends there with finish_reason "stop".
    stop_id = base.token_ids[5]
    first = base.token_ids.index(stop_id)
    final = engine.generate(GenerationRequest(prompt(5, 8), GREEDY, max_tokens=30, stop_token_ids=[stop_id], ignore_eos=True))
    assert final.finish_reason == "stop" and final.token_ids == base.token_ids[: first + 1]
    # A stop string taken from the middle of the text: output ends right before it, never showing part of it.
    text = base.answer_text
    needle = text[len(text) // 2: len(text) // 2 + 3]
    if needle.strip() and "\ufffd" not in needle:
        h = engine.submit(GenerationRequest(prompt(5, 8), GREEDY, max_tokens=30, stop_strings=[needle], ignore_eos=True))
        engine.run_until_done([h])
        streamed = "".join(e.text for e in h.events() if isinstance(e, Delta))
        assert h.final.finish_reason == "stop_sequence"
        assert streamed == h.final.answer_text == text[: text.index(needle)]
    # Every generated token id is streamed exactly once.
    h = engine.submit(GenerationRequest(prompt(5, 8), GREEDY, max_tokens=30, ignore_eos=True))
    engine.run_until_done([h])
    assert [t for e in h.events() if isinstance(e, Delta) for t in e.token_ids] == h.final.token_ids


def test_bad_requests_name_the_field_and_do_not_disturb_others(engine):
    cases = [
        (GenerationRequest([]), "prompt"),
        (GenerationRequest([1] * engine.max_context), "prompt"),
        (GenerationRequest([5, 10**6]), "token_ids"),
        (GenerationRequest([5, -1]), "token_ids"),
        (GenerationRequest([5], max_tokens=0), "max_tokens"),
        (GenerationRequest([5], SamplingParams(temperature=-1.0)), "temperature"),
        (GenerationRequest([5], SamplingParams(top_p=1.5)), "top_p"),
        (GenerationRequest([5], stop_token_ids=[10**7]), "stop_token_ids"),
    ]
    running = engine.submit(GenerationRequest(prompt(1, 6), GREEDY, max_tokens=8, ignore_eos=True))
    for request, field in cases:
        with pytest.raises(RequestError) as e:
            engine.submit(request)
        assert field in str(e.value)
    engine.run_until_done([running])
    assert running.final.finish_reason == "length" and len(running.final.token_ids) == 8


def test_cancel_frees_the_slot_within_a_step(engine):
    h = engine.submit(GenerationRequest(prompt(2, 6), GREEDY, max_tokens=200, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.slots_busy == 1
    h.cancel()
    engine.step()
    assert h.final.finish_reason == "cancelled" and engine.slots_busy == 0


def test_priorities_and_deadlines_order_admission(tiny_bundle):
    clock = [0.0]
    engine = Engine(tiny_bundle, EngineConfig(max_batch=1), clock=lambda: clock[0])
    occupant = engine.submit(GenerationRequest(prompt(0, 4), GREEDY, max_tokens=3, ignore_eos=True))
    engine.step()  # occupant takes the only slot
    background = engine.submit(GenerationRequest(prompt(1, 4), GREEDY, max_tokens=2, priority=Priority.BACKGROUND, ignore_eos=True))
    normal = engine.submit(GenerationRequest(prompt(2, 4), GREEDY, max_tokens=2, ignore_eos=True))
    urgent = engine.submit(GenerationRequest(prompt(3, 4), GREEDY, max_tokens=2, priority=Priority.REALTIME, ignore_eos=True))
    expired = engine.submit(GenerationRequest(prompt(4, 4), GREEDY, max_tokens=2, deadline=0.5))
    order = []
    while engine.has_work():
        clock[0] += 0.1
        engine.step()
        for name, h in (("occupant", occupant), ("background", background), ("normal", normal), ("urgent", urgent)):
            if h.done and name not in order:
                order.append(name)
    assert order == ["occupant", "urgent", "normal", "background"]
    assert expired.final.finish_reason == "deadline" and expired.final.error == "deadline exceeded"


def test_sixteen_requests_under_a_budget_for_four(tiny_bundle):
    from edge_runtime.bundle.reader import open_bundle
    from edge_runtime.bundle.memory_plan import plan_for_bundle

    bundle = open_bundle(tiny_bundle)
    probe = plan_for_bundle(bundle, 10**10, 512, max_batch=8, prefill_chunk=SchedulerConfig().max_step_tokens)
    budget = probe.total_bytes(4, 512) + 1000
    engine = Engine(tiny_bundle, EngineConfig(memory_budget=budget, max_context=512,
                                              scheduler=SchedulerConfig(max_queue=12)))
    assert engine.num_slots == 4
    assert engine.plan.total_bytes(4, 512) <= budget
    handles = [engine.submit(GenerationRequest(prompt(i, 5 + i), GREEDY, max_tokens=12, ignore_eos=True)) for i in range(16)]
    # Submitted before any step: 4 will take the free slots, 12 wait, which fills the queue (12). A burst
    # that fits the free slots plus the queue is accepted however soon the engine admits; one more is not.
    with pytest.raises(QueueFullError, match="12 requests waiting for a slot"):
        engine.submit(GenerationRequest(prompt(99, 5), GREEDY, max_tokens=1))
    peak = 0
    while engine.has_work():
        engine.step()
        peak = max(peak, engine.slots_busy)
    assert all(h.final.finish_reason == "length" and len(h.final.token_ids) == 12 for h in handles)
    assert peak == 4


RSS_SCRIPT = textwrap.dedent("""
    import json, sys, psutil
    from edge_runtime.engine.engine import Engine, EngineConfig
    from edge_runtime.engine.records import GenerationRequest
    from edge_runtime.engine.sampler import SamplingParams
    proc = psutil.Process()
    before = proc.memory_info().rss
    engine = Engine(sys.argv[1], EngineConfig(memory_budget=8 << 30, max_batch=8, max_sequences=8, max_context=1024))
    # Loaded and warm: one short generation has read every weight once.
    engine.generate(GenerationRequest([5, 6, 7], SamplingParams(greedy=True), max_tokens=2, ignore_eos=True))
    loaded = proc.memory_info().rss
    # Touch the weights and the state of a full batch: every slot runs to its full context.
    reqs = [GenerationRequest([5 + i] * 1000, SamplingParams(greedy=True), max_tokens=16, ignore_eos=True) for i in range(8)]
    handles = [engine.submit(r) for r in reqs]
    engine.run_until_done()
    after = proc.memory_info().rss
    plan = engine.plan
    print(json.dumps({"before": before, "loaded": loaded, "after": after, "weights": plan.resident_weight_bytes,
                      "state": engine.pool.nbytes, "overhead": plan.overhead_bytes,
                      "planned_total": plan.total_bytes(8, 1024)}))
""")


@pytest.mark.parametrize("bundle", ["small_bundle", "small_int4_bundle"])
def test_resident_memory_matches_the_plan(bundle, request):
    """Fresh process: resident memory after load is the weights as the planner counts them (weights.bin, plus
    the CPU sessions' pre-packed copies for int4) plus the state it reports, and with every slot running at
    full context it is what the planner says, within 10%."""
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(request.getfixturevalue(bundle))],
                         capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    loaded, after = m["loaded"] - m["before"], m["after"] - m["before"]
    limit = 1.15 * m["weights"] + m["state"] + m["overhead"]
    planned = m["planned_total"] - m["overhead"]  # weights + state of 8 full sequences + working memory
    print(f"\nresident growth after load and warm-up {loaded / 2**20:.0f} MiB, with a full batch {after / 2**20:.0f} MiB; "
          f"limit {limit / 2**20:.0f} MiB (1.15 x weights {m['weights'] / 2**20:.0f} + state {m['state'] / 2**20:.0f} "
          f"+ overhead {m['overhead'] / 2**20:.0f}); planner: {planned / 2**20:.0f} MiB")
    assert loaded <= limit
    assert abs(after - planned) <= 0.10 * planned, f"measured {after}, planned {planned}"


LOAD_SCRIPT = textwrap.dedent("""
    import json, sys, psutil
    from edge_runtime.engine.engine import Engine, EngineConfig
    proc = psutil.Process()
    before = proc.memory_info().rss
    engine = Engine(sys.argv[1], EngineConfig(memory_budget=8 << 30, max_batch=1, max_sequences=1, max_context=64))
    print(json.dumps({"growth": proc.memory_info().rss - before, "prepacked": engine.plan.prepacked_bytes,
                      "weights": engine.plan.weight_bytes, "dequantized": engine.plan.dequantized_bytes}))
""")


def test_eight_bit_blocks_at_accuracy_level_0_are_not_prepacked(small_int4_bundle, small_int8_acc0_bundle):
    """The CPU provider pre-packs MatMulNBits weights at accuracy level 4 but not 8-bit blocks at level 0 (it
    dequantizes those on every call instead): the plan counts what each session creation actually adds."""
    for bundle in (small_int4_bundle, small_int8_acc0_bundle):
        out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(bundle)], capture_output=True, text=True,
                             check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\n{bundle.name}: resident growth at load {m['growth'] / 2**20:.0f} MiB; plan: weights "
              f"{m['weights'] / 2**20:.0f} MiB + pre-packed {m['prepacked'] / 2**20:.0f} MiB, one float32 "
              f"matrix dequantized per call {m['dequantized'] / 2**20:.0f} MiB")
        if bundle == small_int8_acc0_bundle:
            # Nothing copied: the sessions' own structures and the mapped pages touched so far.
            assert m["prepacked"] == 0 and m["dequantized"] > 0
            assert m["growth"] < m["weights"]
        else:  # the copies the plan counts (measured 0.94x of them for int4, module docstring of memory_plan)
            assert m["growth"] > 0.9 * m["prepacked"] > 0


def test_a_slot_reused_by_a_later_request_keeps_decode_in_place(tiny_bundle):
    """A finishes first and E takes its slot, arriving last: the decode batch still runs in slot order, so
    every decode batch is one call over consecutive slots (none split); the tokens are each request's own."""
    engine = Engine(tiny_bundle, EngineConfig(max_batch=4, max_sequences=4))
    lengths = {"A": 3, "B": 20, "C": 20, "D": 20, "E": 10}
    requests = {k: GenerationRequest(prompt(i, 5), GREEDY, max_tokens=n, ignore_eos=True)
                for i, (k, n) in enumerate(lengths.items())}
    alone = {k: engine.generate(r).token_ids for k, r in requests.items()}
    split_before = engine.runner.split_calls["decode"]
    handles = {k: engine.submit(requests[k]) for k in "ABCD"}
    while handles["A"].final is None:
        engine.step()
    handles["E"] = engine.submit(requests["E"])
    engine.run_until_done()
    assert {k: h.final.token_ids for k, h in handles.items()} == alone
    assert engine.runner.split_calls["decode"] == split_before


def test_a_hole_left_by_a_finished_request_is_filled_by_moving_the_top_one_down(tiny_bundle):
    """B (slot 1) finishes first and nothing waits: D, in the top slot, moves into slot 1; when D finishes, C
    moves down in turn. Decode stays one call over consecutive slots (slots 0, 2, 3 would split every step)
    and every request still generates exactly its own tokens."""
    engine = Engine(tiny_bundle, EngineConfig(max_batch=4, max_sequences=4))
    lengths = {"A": 20, "B": 3, "C": 20, "D": 12}
    requests = {k: GenerationRequest(prompt(i, 5), GREEDY, max_tokens=n, ignore_eos=True)
                for i, (k, n) in enumerate(lengths.items())}
    alone = {k: engine.generate(r).token_ids for k, r in requests.items()}
    split_before, moves_before = engine.runner.split_calls["decode"], engine.slot_moves
    handles = {k: engine.submit(requests[k]) for k in "ABCD"}
    engine.run_until_done()
    assert {k: h.final.token_ids for k, h in handles.items()} == alone
    assert engine.runner.split_calls["decode"] == split_before
    assert engine.slot_moves - moves_before == 2


@pytest.mark.parametrize("spinning, stop, allow, duration", [
    ("in_run", "1", "1", None), ("always", "0", "1", None), ("brief", "1", "1", "20"), ("never", "1", "0", None)])
def test_sessions_spin_as_configured(tiny_bundle, spinning, stop, allow, duration):
    """Both sessions get ONNX Runtime's spinning switches (and for "brief" its spin bound) from
    ProviderConfig.spinning; a bad value is refused by name."""
    engine = Engine(tiny_bundle, EngineConfig(max_batch=1, providers=ProviderConfig(spinning=spinning)))
    for session in engine.runner.sessions.values():
        options = session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == stop
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == allow
        if duration is None:
            with pytest.raises(RuntimeError, match="does not have configuration"):
                options.get_session_config_entry("session.intra_op.spin_duration_us")
        else:
            assert options.get_session_config_entry("session.intra_op.spin_duration_us") == duration
    with pytest.raises(ValueError, match="spinning: 'sometimes' is not one of always, in_run, brief, never"):
        ProviderConfig(spinning="sometimes")
    assert ProviderConfig().spinning == "never"


def test_more_sequences_than_rows_take_turns(tiny_bundle):
    """Slots come from the budget, rows per model call from the bundle: 6 sequences in 2-row calls give the
    same tokens as each alone."""
    engine = Engine(tiny_bundle, EngineConfig(max_batch=2, max_sequences=6))
    requests = [GenerationRequest(prompt(i, 4 + 2 * i), GREEDY, max_tokens=10, ignore_eos=True) for i in range(6)]
    alone = [engine.generate(r).token_ids for r in requests]
    handles = [engine.submit(r) for r in requests]
    peak = 0
    while engine.has_work():
        engine.step()
        peak = max(peak, engine.slots_busy)
    assert peak == 6 and engine.max_rows == 2
    assert [h.final.token_ids for h in handles] == alone
