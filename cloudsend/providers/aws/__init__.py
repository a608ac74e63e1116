"""The aws provider: EC2 instances declared with Pulumi (see docs/internals.md, providers/aws).

Import-light on purpose: `cloudsend --help` imports the providers package, and pulumi_aws alone
takes ~0.5 s to import (seconds cold). Modules that need pulumi, pulumi_aws or boto3 import
them at their top and are imported by callers only when the aws provider is used:

    spec.py     Config → StackSpec (pure)          program.py  the Pulumi program
    keys.py     per-stack ed25519 key              offline.py  resources via the mock runtime
    costs.py    $/hour estimate from prices.json

`project_dir()` is the Pulumi project (Pulumi.yaml + stacks/) for teams using the pulumi CLI.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["project_dir"]


def project_dir() -> Path:
    """The directory holding Pulumi.yaml (whose `main:` is stacks/).

    A source checkout: the repository root. An installed wheel: the `cloudsend` package dir,
    where the build copies Pulumi.yaml and stacks/ (pyproject force-include).
    """
    package = Path(__file__).resolve().parents[2]  # .../cloudsend
    for candidate in (package.parent, package):
        if (candidate / "Pulumi.yaml").is_file() and (candidate / "stacks").is_dir():
            return candidate
    raise FileNotFoundError(f"Pulumi.yaml and stacks/ not found beside {package}")
