"""Providers turn a config into Hosts and tear them down. Chosen by `provider:` in the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudsend.errors import ConfigError
from cloudsend.providers.base import Host, HostsNotCleaned, Provider

if TYPE_CHECKING:
    from cloudsend.config.models import Config

__all__ = ["Host", "HostsNotCleaned", "Provider", "get_provider", "require_aws_extra"]


def require_aws_extra() -> None:
    """provider: aws needs the `aws` extra; say how to get it instead of an ImportError."""
    import importlib.util

    missing = [m for m in ("pulumi", "pulumi_aws", "boto3") if not importlib.util.find_spec(m)]
    if missing:
        raise ConfigError(
            f"provider: aws needs {', '.join(missing)}, which are not installed",
            hint="pip install 'cloudsend[aws]'",
        )


def get_provider(config: Config) -> Provider:
    if config.provider == "local":
        from cloudsend.providers.local import LocalProvider

        return LocalProvider(config)
    if config.provider == "ssh":
        from cloudsend.providers.ssh import SshProvider

        return SshProvider(config)
    if config.provider == "aws":
        require_aws_extra()
        from cloudsend.providers.aws.provider import AwsProvider

        return AwsProvider(config)
    # The ssh and aws providers arrive with their own issues; say so instead of failing later.
    raise ConfigError(
        f"provider: {config.provider} is not supported yet by this version of cloudsend",
        hint="use provider: local (the default) to run on this machine",
    )
