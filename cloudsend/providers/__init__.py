"""Providers turn a config into Hosts and tear them down. Chosen by `provider:` in the config.

A provider is one class satisfying providers.base.Provider, named in PROVIDERS below; its module
is imported only when that provider is used (`cloudsend --help` imports none of them).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from cloudsend.errors import ConfigError
from cloudsend.providers.base import Host, HostsNotCleaned, Preview, Provider

if TYPE_CHECKING:
    from cloudsend.config.models import Config

__all__ = [
    "PROVIDERS",
    "Host",
    "HostsNotCleaned",
    "Preview",
    "Provider",
    "check_config",
    "get_provider",
    "require_aws_extra",
]

# provider: name → "module:Class" (Class.needs_modules: what its extra installs).
PROVIDERS = {
    "local": "cloudsend.providers.local:LocalProvider",
    "ssh": "cloudsend.providers.ssh:SshProvider",
    "aws": "cloudsend.providers.aws.provider:AwsProvider",
}


def _provider_class(name: str) -> Any:
    where = PROVIDERS.get(name)
    if where is None:
        raise ConfigError(
            f"provider: {name} is not supported by this version of cloudsend",
            hint=f"use one of {', '.join(PROVIDERS)} (local, the default, runs on this machine)",
        )
    module, _, cls = where.partition(":")
    return getattr(importlib.import_module(module), cls)


def _require_extra(name: str, modules: tuple[str, ...]) -> None:
    """A provider's extra is missing: say how to get it instead of an ImportError."""
    missing = [m for m in modules if not importlib.util.find_spec(m)]
    if missing:
        raise ConfigError(
            f"provider: {name} needs {', '.join(missing)}, which are not installed",
            hint=f"pip install 'cloudsend[{name}]'",
        )


def require_aws_extra() -> None:
    """provider: aws needs the `aws` extra."""
    _require_extra("aws", tuple(_provider_class("aws").needs_modules))


def get_provider(config: Config) -> Provider:
    cls = _provider_class(config.provider)
    needs = tuple(cls.needs_modules)
    if config.provider == "aws":  # on a file:// stack's maestro: boto3 only (no Pulumi there)
        from cloudsend.providers.aws.maestro_side import needs_modules

        needs = needs_modules(config.base_dir, needs)
    _require_extra(config.provider, needs)
    provider: Provider = cls(config)
    return provider


def check_config(config: Config) -> list[str]:
    """`cloudsend validate`'s provider part (Provider.check): needs no extra installed."""
    provider: Provider = _provider_class(config.provider)(config)
    return provider.check()
