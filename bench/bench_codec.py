"""Decode and encode speed of the generated converter against pydantic v2.

The pydantic models are what datamodel-code-generator makes of the same bundled schema
(generated into a temporary directory at start). For each representative message:

- decode: ``structure(orjson.loads(raw), Model)`` vs ``PydanticModel.model_validate_json(raw)``
- encode: ``orjson.dumps(unstructure(obj))`` vs ``pydantic_obj.model_dump_json()``

Each pair is timed in alternation (best of N rounds of ``timeit``), so a burst of noise on
this shared machine hits both sides; the ratios ours/pydantic are printed side by side with
their targets (decode <= 1.0, encode <= 0.7). The script always exits 0 when it could
measure: the ratios are for people to read, not thresholds (see DESIGN.md).

    .venv/bin/python bench/bench_codec.py [--rounds N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import timeit
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "generated"))

from deepexec_protocol import models  # noqa: E402
from deepexec_protocol.converter import structure, unstructure  # noqa: E402

BUNDLE = ROOT / "generated" / "schema" / "deepexec.bundle.schema.json"
TARGETS = {"decode": 1.0, "encode": 0.7}


def pydantic_models(tmp: Path) -> ModuleType:
    """Run datamodel-codegen on the bundle and import what it wrote."""
    exe = Path(sys.executable).with_name("datamodel-codegen")
    out = tmp / "deepexec_pydantic.py"
    subprocess.run(
        [
            str(exe) if exe.exists() else "datamodel-codegen",
            "--input",
            str(BUNDLE),
            "--input-file-type",
            "jsonschema",
            "--output-model-type",
            "pydantic_v2.BaseModel",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    spec = importlib.util.spec_from_file_location("deepexec_pydantic", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def messages() -> dict[str, tuple[str, dict[str, Any]]]:
    """Representative messages, by label: (model name, JSON-shaped data)."""
    defs = json.loads(BUNDLE.read_text(encoding="utf-8"))["$defs"]
    job_status = defs["JobStatusResponse"]["examples"][0]
    assert job_status["output"]["result"]["type"] == "code_execution_result"
    return {
        "JobStatusResponse (CodeExecutionResult)": ("JobStatusResponse", job_status),
        "CodeExecutionResponse": (
            "CodeExecutionResponse",
            defs["CodeExecutionResponse"]["examples"][0],
        ),
        "JobOutputEvent (stream chunk)": ("JobOutputEvent", defs["JobOutputEvent"]["examples"][0]),
    }


def best_pair(ours: Any, theirs: Any, rounds: int) -> tuple[float, float]:
    """Best time per call of each callable, timed in alternation after a warm-up."""
    number = 1
    while timeit.timeit(ours, number=number) < 0.005:  # about 5 ms per timing
        number *= 2
    for fn in (ours, theirs):
        timeit.timeit(fn, number=number * 20)  # warm caches and the CPU clock
    best_ours = best_theirs = float("inf")
    for _ in range(rounds):
        best_ours = min(best_ours, timeit.timeit(ours, number=number) / number)
        best_theirs = min(best_theirs, timeit.timeit(theirs, number=number) / number)
    return best_ours, best_theirs


def callables(cls: type[Any], pcls: Any, raw: bytes, obj: Any, pobj: Any) -> tuple[Any, ...]:
    """(our decode, pydantic decode, our encode, pydantic encode) of one message."""

    def dec() -> Any:
        return structure(orjson.loads(raw), cls)

    def pdec() -> Any:
        return pcls.model_validate_json(raw)

    def enc() -> bytes:
        return orjson.dumps(unstructure(obj))

    def penc() -> Any:
        return pobj.model_dump_json()

    return dec, pdec, enc, penc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="timings per side (best kept)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        pyd = pydantic_models(Path(tmp))
    rows: list[tuple[str, str, float, float]] = []
    for label, (name, data) in messages().items():
        cls, pcls = getattr(models, name), getattr(pyd, name)
        raw = orjson.dumps(data)
        obj, pobj = structure(orjson.loads(raw), cls), pcls.model_validate_json(raw)
        # each side reads what the other writes (pydantic rewrites timestamps: no equality)
        structure(orjson.loads(pobj.model_dump_json()), cls)
        pcls.model_validate_json(orjson.dumps(unstructure(obj)))

        dec, pdec, enc, penc = callables(cls, pcls, raw, obj, pobj)
        rows.append((label, "decode", *best_pair(dec, pdec, args.rounds)))
        rows.append((label, "encode", *best_pair(enc, penc, args.rounds)))

    print(f"{'message':40} {'op':6} {'ours µs':>9} {'pydantic µs':>12} {'ratio':>6} {'target':>7}")
    worst = {op: 0.0 for op in TARGETS}
    for label, op, ours, theirs in rows:
        ratio = ours / theirs
        worst[op] = max(worst[op], ratio)
        mark = "ok" if ratio <= TARGETS[op] else "OVER"
        print(
            f"{label:40} {op:6} {ours * 1e6:9.2f} {theirs * 1e6:12.2f} {ratio:6.2f} "
            f"{'<= ' + str(TARGETS[op]):>7} {mark}"
        )
    print(
        "worst ratio ours/pydantic: "
        + ", ".join(f"{op} {worst[op]:.2f} (target <= {TARGETS[op]})" for op in TARGETS)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
