"""The published schema works for generators that are not ours.

- datamodel-code-generator turns the bundled schema into pydantic v2 models, which accept
  every schema example (and what our converter writes), and reject what the schema rejects;
- openapi.json is a valid OpenAPI document.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pydantic
import pytest
from deepexec_protocol.converter import structure, unstructure
from protocol_fixtures import BUNDLE_PATH, DEFS, MODEL_CLASSES, OPENAPI_PATH

EXAMPLES = [
    pytest.param(name, example, id=f"{name}[{i}]")
    for name, schema in DEFS.items()
    for i, example in enumerate(schema.get("examples", []))
]


@pytest.fixture(scope="module")
def pydantic_models(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    out = tmp_path_factory.mktemp("downstream") / "deepexec_downstream.py"
    exe = Path(sys.executable).with_name("datamodel-codegen")
    subprocess.run(
        [
            str(exe),
            "--input",
            str(BUNDLE_PATH),
            "--input-file-type",
            "jsonschema",
            "--output-model-type",
            "pydantic_v2.BaseModel",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    spec = importlib.util.spec_from_file_location("deepexec_downstream", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_every_type_becomes_a_named_pydantic_type(pydantic_models: ModuleType) -> None:
    for name in DEFS:
        assert hasattr(pydantic_models, name), f"datamodel-codegen made no {name}"


@pytest.mark.parametrize(("name", "example"), EXAMPLES)
def test_example_validates_with_pydantic(
    name: str, example: Any, pydantic_models: ModuleType
) -> None:
    model = getattr(pydantic_models, name)
    parsed = model.model_validate(example)
    # and through JSON, as a consumer would read it off the wire
    model.model_validate_json(json.dumps(example))
    assert parsed is not None
    if name in MODEL_CLASSES:
        # what our converter writes for the same message is valid for them too
        ours = unstructure(structure(example, MODEL_CLASSES[name]))
        model.model_validate(ours)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("CodeExecutionInput", {"code": "x", "language": "Python"}),
        ("CodeExecutionInput", {"code": "x", "language": "python", "shell": True}),
        ("TextGenerationInput", {"prompt": "x", "temperature": 2.5}),
        ("JobId", "job_123"),
        ("SubmitJobInput", {"name": "n", "job_type": "code_execution", "data": {}}),
    ],
)
def test_pydantic_rejects_what_the_schema_rejects(
    name: str, bad: Any, pydantic_models: ModuleType
) -> None:
    with pytest.raises(pydantic.ValidationError):
        getattr(pydantic_models, name).model_validate(bad)


def test_openapi_document_is_valid() -> None:
    from openapi_spec_validator import validate

    spec = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    paths = {(p, m.upper()) for p, item in spec["paths"].items() for m in item}
    assert ("/v1/jobs/{job_id}/events", "GET") in paths
    assert ("/v1/execute", "POST") in paths
