"""The provider contract seen from the CLI: it renders what providers.base declares (Preview)
and imports no provider module; local and ssh have no machine operations."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from tests.conftest import Project

SSH_CONFIG = """
provider: ssh
hosts:
  - address: 192.0.2.5
  - address: 192.0.2.6
jobs:
  - run_command: x
"""


def test_local_and_ssh_have_no_machines(project: Project) -> None:
    from cloudsend.config import load_config
    from cloudsend.providers import get_provider

    local = get_provider(load_config(project.config("jobs:\n  - run_command: x\n")))
    assert local.machines is None and not local.owns_machines
    ssh = get_provider(load_config(project.config(SSH_CONFIG)))
    assert ssh.machines is None and not ssh.owns_machines


def test_preview_of_providers_without_cloud_resources(project: Project) -> None:
    project.config("instances:\n  - number: 3\njobs:\n  - run_command: x\n")
    doc = json.loads(project.cli("preview", "--json", check=True).stdout)
    assert doc == {
        "provider": "local",
        "resources": [],
        "hosts": 3,
        "cost": {"total_per_hour": 0.0},
    }
    text = project.cli("preview", check=True).stdout
    assert "provider local: no cloud resources, 3 host(s), nothing billed by cloudsend" in text
    project.config(SSH_CONFIG)  # no host is contacted by a preview (192.0.2.x: TEST-NET)
    doc = json.loads(project.cli("preview", "--json", check=True).stdout)
    assert doc["provider"] == "ssh" and doc["hosts"] == 2


def test_cli_imports_no_provider_module() -> None:
    """cli.py knows the registry (get_provider, check_config), never a provider's module."""
    import cloudsend.cli

    tree = ast.parse(Path(cloudsend.cli.__file__).read_text())
    modules = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert "cloudsend.providers" in modules  # the registry: the test looks at the right file
    assert not [m for m in modules if m.startswith("cloudsend.providers.")], modules
