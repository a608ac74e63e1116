"""What an AWS maestro needs beyond cloudsend itself: the Pulumi CLI and the aws plugin, when
it re-creates lost workers (a shared state backend, OnAwsMaestro.pulumi_here).

`maestro_extra_setup(config, pulumi_here=...)` is the shell the laptop's side runs on the
maestro once cloudsend is shipped there (cloudsend.maestro.ship): empty when Pulumi does not
run there (a file:// backend: the laptop re-creates workers with `cloudsend up`). Versions are
pinned to what this cloudsend runs with: the CLI of the installed pulumi SDK (they are released
together under one version number) and the aws plugin of the installed pulumi_aws.
"""

from __future__ import annotations

import importlib.metadata

from cloudsend.bootstrap.jinja import render_template
from cloudsend.config.models import Config
from cloudsend.errors import BootstrapError

INSTALLER_URL = "https://get.pulumi.com"
TEMPLATE = "maestro/pulumi_cli.sh.j2"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise BootstrapError(
            f"{dist} is not installed: the maestro's Pulumi version is pinned to it",
            hint="pip install 'cloudsend[aws]'",
        ) from None


def pulumi_cli_script(cli_version: str, plugins: dict[str, str]) -> str:
    """The script installing pulumi `cli_version` under ~/.pulumi and `plugins` (name →
    version) on the maestro."""
    return render_template(
        TEMPLATE,
        {
            "cli_version": cli_version.lstrip("v"),
            "plugins": sorted((n, v.lstrip("v")) for n, v in plugins.items()),
            "installer_url": INSTALLER_URL,
        },
    )


def maestro_extra_setup(config: Config, *, pulumi_here: bool) -> str:
    """Shell to run on the maestro after shipping cloudsend ('' when there is nothing to do).
    `pulumi_here`: what the laptop writes into OnAwsMaestro (a shared state backend)."""
    if config.provider != "aws" or not pulumi_here:
        return ""
    return pulumi_cli_script(_version("pulumi"), {"aws": _version("pulumi_aws")})
