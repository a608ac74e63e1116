"""Pulumi CLI entry: `pulumi up` from the directory of Pulumi.yaml runs this file.

cloudsend itself drives the same program inline through the Automation API; this entry is for
teams who prefer the `pulumi` CLI (their own backend, policy packs, CI). It reads the stack
config (see Pulumi.dev.yaml beside this file):

    cloudsend:config      path of the cloudsend config file (relative: to Pulumi.yaml's dir)
    cloudsend:publicKey   optional OpenSSH public key; default: cloudsend's key for this stack
                          (~/.cloudsend/keys/, created on first use)
    cloudsend:sshCidrs    optional list of CIDRs allowed to SSH in; default: the config's
                          ssh_cidrs. No public-IP detection here: the CLI run must say who.
    aws:region            used when the cloudsend config names no region

The Pulumi stack name wins over the config's `stack:` so tags and the key match the stack
being deployed. The Pulumi project (`name:` in Pulumi.yaml) must be the config's project slug,
the project cloudsend's own engine uses: under another name the CLI would keep a second state
for the same tagged, same-named machines, which neither `cloudsend down` nor the leak check
would know about. A mismatch stops the program before it declares anything.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from cloudsend.config import load_config
from cloudsend.providers.aws.keys import stack_key
from cloudsend.providers.aws.program import make_program
from cloudsend.providers.aws.spec import project_slug, stack_spec

PROJECT_DIR = Path(__file__).resolve().parent.parent  # where Pulumi.yaml is


def _config_path(value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    # The CLI runs the program from `main:` (stacks/); users write paths from Pulumi.yaml's dir.
    for base in (PROJECT_DIR, Path.cwd()):
        if (base / path).exists():
            return base / path
    return PROJECT_DIR / path


def main() -> None:
    settings = pulumi.Config("cloudsend")
    config = load_config(_config_path(settings.require("config")))
    aws = config.aws.model_copy(update={"stack": pulumi.get_stack()})
    config = config.model_copy(update={"aws": aws})
    project = project_slug(config)
    if pulumi.get_project() != project:
        raise pulumi.RunError(
            f"Pulumi.yaml names the project {pulumi.get_project()!r} but the cloudsend config's "
            f"project is {project!r} (the project `cloudsend up` uses): set `name: {project}` "
            "in Pulumi.yaml, or `project:` in the cloudsend config"
        )
    public_key = settings.get("publicKey") or stack_key(project, pulumi.get_stack()).public_openssh
    ssh_cidrs = settings.get_object("sshCidrs") or list(config.aws.ssh_cidrs)
    spec = stack_spec(
        config,
        public_key=public_key,
        ssh_cidrs=list(ssh_cidrs),
        default_region=pulumi.Config("aws").get("region"),
    )
    make_program(spec)()


main()
