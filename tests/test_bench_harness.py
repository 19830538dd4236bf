"""The benchmark harness's machinery, end to end on the tiny preset with one repetition: every case runs
(transformers reference and gRPC server subprocesses included) and reports medians and ratios.
Not a timed test: it asserts the structure of the results, never a speed."""

from __future__ import annotations

import json
import statistics

import pytest

pytest.importorskip("transformers")
pytest.importorskip("psutil")


def test_harness_runs_every_case_on_tiny(tmp_path):
    from bench.report import render
    from bench.run import run
    from bench.settings import CASES, TINY

    out = tmp_path / "results.json"
    results = run(TINY, cache=tmp_path / "cache", out=out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert list(results["cases"]) == list(CASES)
    for name, case in results["cases"].items():
        assert case["measurements"], name
        for key, m in case["measurements"].items():
            assert m["runs"] and m["median"] == statistics.median(m["runs"]), (name, key)
        assert case["ratios"], name
        for key, r in case["ratios"].items():
            num, den = case["measurements"][r["num"]], case["measurements"][r["den"]]
            assert r["paired"] == (num.get("rounds") is not None and num.get("rounds") == den.get("rounds")), (name, key)
            want = (statistics.median(x / y for x, y in zip(num["runs"], den["runs"])) if r["paired"]
                    else num["median"] / den["median"])
            assert r["value"] == pytest.approx(want), (name, key)
            assert r["met"] in ((None,) if r["target"] is None else (True, False)), (name, key)
        assert case["load"]["start"] and case["load"]["end"]
    decode = results["cases"]["decode"]
    assert {"fp32 b1", "fp32 b2", "transformers b1", "transformers b2"} <= set(decode["measurements"])
    assert "fp32 b1 / transformers b1" in decode["ratios"] and decode["ratios"]["fp32 b1 / transformers b1"]["paired"]
    thinking = results["cases"]["thinking"]
    assert thinking["details"]["thinking_ended"]
    assert thinking["ratios"]["single / two calls transformers 4"]["paired"]  # the model card's method on transformers
    assert results["cases"]["service"]["details"]["spinning"] == "never" != TINY.spinning  # the service as deployed
    assert results["meta"]["machine"] and results["meta"]["settings"]["preset"] == "tiny"
    text = render(results)
    assert all(f"### {name}" in text for name in CASES) and "### Targets" in text


def test_cli_rejects_an_unknown_case():
    from bench.run import main

    with pytest.raises(SystemExit):
        main(["--cases", "decode,nonsense"])


def test_long_context_reports_paired_ratios_on_tiny(tmp_path, tiny_int4_bundle):
    from bench.long_context import TARGETS, main

    out = tmp_path / "long_context.json"
    assert main(["--bundle", str(tiny_int4_bundle), "--no-kernels", "--rounds", "2", "--warmups", "0",
                 "--batches", "1", "2", "--long", "48", "--short", "8", "--new-tokens", "10", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["meta"]["bundle_max_context"] == results["meta"]["engine_max_context"] == 512  # the bundle's limit
    case = results["cases"]["long_context"]
    assert set(case["measurements"]) == {"b1 short", "b1 long", "b2 short", "b2 long"}
    for key, m in case["measurements"].items():
        assert m["unit"] == "ms/step" and len(m["runs"]) == 2 and all(x > 0 for x in m["runs"]), key
        assert case["details"]["decode_steps_counted"][key] > 0, key
    for b in (1, 2):
        r = case["ratios"][f"b{b} long / short"]
        assert r["paired"] and 0 < r["min"] <= r["value"] <= r["max"], b
        assert r["target"] == TARGETS.get(b) and r["met"] in ((None,) if r["target"] is None else (True, False)), b
