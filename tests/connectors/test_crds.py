"""crds/ is generated from the model and must stay in step with it."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_crds", ROOT / "hack" / "gen_crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crds_folder_is_up_to_date_with_the_models() -> None:
    generator = _generator()
    rendered = generator.render()
    for folder in generator.FOLDERS:
        for name, text in rendered.items():
            on_disk = (folder / name).read_text()
            assert on_disk == text, f"{folder / name} is stale: run python hack/gen_crds.py"


def test_usage_is_immutable_through_cel() -> None:
    from smtpgate.connectors import crd

    usage = crd.receive_connector()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]["properties"]["usage"]
    assert usage["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"


def test_every_spec_field_is_documented() -> None:
    from smtpgate.connectors import crd

    def walk(node: dict, path: str) -> list[str]:
        missing = []
        for name, prop in node.get("properties", {}).items():
            if path.startswith("spec") and "description" not in prop:
                missing.append(f"{path}.{name}")
            missing += walk(prop, f"{path}.{name}")
        if "items" in node:
            missing += walk(node["items"], path + "[]")
        return missing

    for body in crd.all_crds().values():
        root = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert walk(root, "spec") == []


def test_schemas_are_structural() -> None:
    from smtpgate.connectors import crd

    text = repr(crd.all_crds())
    assert "$ref" not in text and "'title'" not in text

    def maps(node: object) -> list[object]:
        """Every additionalProperties: only maps of a typed value, never true or false."""
        if isinstance(node, list):
            return [m for item in node for m in maps(item)]
        if not isinstance(node, dict):
            return []
        found = [node["additionalProperties"]] if "additionalProperties" in node else []
        return found + [m for value in node.values() for m in maps(value)]

    found = maps(crd.all_crds())
    typed = [
        m
        for m in found
        if isinstance(m, dict) and (m.get("type") or m.get("x-kubernetes-int-or-string"))
    ]
    assert found and typed == found, found
