"""The rooms' import rules: connectors is pure; operator and receiver never meet; the kubectl
plugin reads the API itself and asks only the model."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROOMS = {
    "connectors": "smtpgate.connectors",
    "operator": "smtpgate.operator",
    "receiver": "smtpgate.receiver",
    "plugin": "smtpgate.plugin",
}
FORBIDDEN = {
    "connectors": ("kopf", "kubernetes", "aiosmtpd", "smtpgate.operator", "smtpgate.receiver"),
    "operator": ("smtpgate.receiver", "aiosmtpd"),
    "receiver": ("smtpgate.operator", "kopf", "kubernetes"),
    "plugin": ("smtpgate.operator", "smtpgate.receiver", "kopf", "aiosmtpd"),
}


def _imports(path: pathlib.Path, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
    return names


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_room_keeps_its_import_rules(room: str) -> None:
    offending = []
    for path in sorted((ROOT / room).rglob("*.py")):
        relative = path.relative_to(ROOT / room).with_suffix("")
        package = ".".join([ROOMS[room], *relative.parts[:-1]])
        for name in _imports(path, package):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[room]):
                offending.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offending == []


def test_contract_check_sees_a_violation(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("from ..operator import handlers\nimport kopf\n")
    assert _imports(sample, "smtpgate.receiver") == {"smtpgate.operator", "kopf"}


def test_operator_is_not_a_top_level_name() -> None:
    """From the repository root, where the folder operator/ sits first on sys.path, the
    name operator is still the standard library's and the operator is smtpgate.operator."""
    import subprocess
    import sys

    code = (
        "import operator, smtpgate.operator, sysconfig;"
        "print(operator.__file__ or '', smtpgate.operator.__file__, sysconfig.get_paths()['stdlib'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    stdlib_operator, ours, stdlib = out.stdout.split()
    assert stdlib_operator.startswith(stdlib)
    assert ours.startswith(str(ROOT / "operator"))
