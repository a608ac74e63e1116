"""boto3 sessions and clients for the aws provider, and the caller's public IP.

Every boto3 client cloudsend makes comes from `client()`, so one environment variable,
CLOUDSEND_AWS_ENDPOINT_URL, points all of them at a local moto server in tests (there is no AWS
account on the machines the project is built on). boto3 is imported inside functions: importing
it costs ~0.3 s and `cloudsend --help` must not pay for it.

Credentials are never read, printed or logged here: boto3 resolves them itself (env, profile,
SSO, instance role) and the errors we re-raise only name the profile and region.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cloudsend.errors import ProvisionError

if TYPE_CHECKING:
    from boto3.session import Session

ENDPOINT_ENV = "CLOUDSEND_AWS_ENDPOINT_URL"
PUBLIC_IP_URL_ENV = "CLOUDSEND_PUBLIC_IP_URL"
DEFAULT_PUBLIC_IP_URL = "https://checkip.amazonaws.com"
FALLBACK_REGION = "us-east-1"  # when neither the config nor boto3's chain names a region
PUBLIC_IP_TIMEOUT = 3.0

# Short timeouts and few retries: a CLI that hangs for minutes on a dead network is worse than
# one that says so after a few seconds. Callers that poll (the monitor) retry on their own.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 20.0
DEFAULT_MAX_ATTEMPTS = 3


def endpoint_url() -> str | None:
    """The endpoint override for every AWS service (tests: a moto server), or None."""
    return os.environ.get(ENDPOINT_ENV) or None


def aws_session(profile: str | None, region: str | None) -> Session:
    """A boto3 Session for `profile` (None: boto3's default chain) in `region`.

    An unknown profile is a ProvisionError naming it, not a botocore traceback.
    """
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session(profile_name=profile, region_name=region)
    except ProfileNotFound as exc:
        raise ProvisionError(
            f"AWS profile {profile!r} not found",
            hint="check `aws configure list-profiles`, or remove `profile:` to use the default "
            "credentials chain",
        ) from exc


# ClientError codes that mean "who you are" failed, not "what you asked": the credentials are
# expired, or AWS does not know them.
EXPIRED_CODES = frozenset(
    {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
)
REFUSED_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "AuthFailure",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidSecurity",
    }
)


def credentials_hint(profile: str | None) -> str:
    login = f"aws configure --profile {profile}" if profile else "aws configure"
    sso = f"aws sso login --profile {profile}" if profile else "aws sso login --profile NAME"
    return (
        f"run `{login}` (or `{sso}` for an SSO profile), or export AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones); `profile:` in the "
        "config picks a named profile of ~/.aws/config"
    )


def credentials_error(exc: BaseException, profile: str | None = None) -> ProvisionError | None:
    """A ProvisionError about the AWS credentials when `exc` (or an exception it was raised
    from) is a credentials problem: none found, incomplete, an unknown profile, an expired or
    refused token, a failed SSO/process login. None otherwise.

    The message names the profile, the provider and the missing variable at most: never a
    value (botocore's own texts here carry none either, but we do not repeat them).
    """
    from botocore import exceptions as bc

    who = f"profile {profile!r}" if profile else "the default credentials chain"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        what: str | None = None
        if isinstance(current, bc.NoCredentialsError):
            what = f"no AWS credentials found ({who})"
        elif isinstance(current, bc.PartialCredentialsError):
            found_in = current.kwargs.get("provider", "?")
            missing = current.kwargs.get("cred_var", "?")
            what = f"incomplete AWS credentials in {found_in}: {missing} is missing ({who})"
        elif isinstance(current, bc.ProfileNotFound):
            name = current.kwargs.get("profile", profile)
            return ProvisionError(
                f"AWS profile {name!r} not found",
                hint="check `aws configure list-profiles`, or remove `profile:` to use the "
                "default credentials chain",
            )
        elif isinstance(current, (bc.UnauthorizedSSOTokenError, bc.SSOTokenLoadError)):
            what = f"the AWS SSO login has expired or is missing ({who})"
        elif isinstance(current, (bc.TokenRetrievalError, bc.CredentialRetrievalError)):
            source = current.kwargs.get("provider", "the credentials provider")
            what = f"AWS credentials could not be obtained from {source} ({who})"
        elif isinstance(current, bc.ClientError):
            code = str(current.response.get("Error", {}).get("Code", ""))
            operation = getattr(current, "operation_name", "") or "the call"
            if code in EXPIRED_CODES:
                what = f"the AWS credentials have expired ({who}; {code} on {operation})"
            elif code in REFUSED_CODES:
                what = f"AWS refused the credentials ({who}; {code} on {operation})"
        if what is not None:
            return ProvisionError(what, hint=credentials_hint(profile))
        current = current.__cause__ or current.__context__
    return None


def profile_of(session: Session) -> str | None:
    """The profile a session reads (None for boto3's "default", the plain chain)."""
    name = getattr(session, "profile_name", None)
    return None if not name or name == "default" else str(name)


@contextlib.contextmanager
def credentials_errors(profile: str | None) -> Iterator[None]:
    """Any failure inside caused by the AWS credentials becomes the one credentials message
    (not "instance type ... is not offered: Unable to locate credentials")."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unchanged unless it is about credentials
        error = credentials_error(exc, profile)
        if error is None or error is exc:
            raise
        raise error from None


def check_credentials(session: Session, profile: str | None) -> None:
    """Refuse early when the chain finds no credentials at all (expired ones show up at the
    first call instead, and `credentials_errors` names them then)."""
    with credentials_errors(profile):
        from botocore.exceptions import NoCredentialsError

        if session.get_credentials() is None:
            raise NoCredentialsError()


def default_region(profile: str | None = None) -> str | None:
    """The region boto3's chain resolves (AWS_REGION / AWS_DEFAULT_REGION, then the profile's
    `region` in ~/.aws/config), or None when nothing sets one."""
    return aws_session(profile, None).region_name or None


def resolve_region(configured: str | None, profile: str | None = None) -> str:
    """The stack's default region: the config's `region:`, else boto3's chain, else us-east-1.

    One answer for plan, preview, up, down, the monitor and the leak check: a down or a watch
    that looked in a different region from the up would report "nothing left" while the
    instances bill elsewhere.
    """
    return configured or default_region(profile) or FALLBACK_REGION


def client(
    session: Session,
    service: str,
    region: str | None = None,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Any:
    """A boto3 client for `service` in `region` (default: the session's region).

    Honours CLOUDSEND_AWS_ENDPOINT_URL so every call can be pointed at a moto server.
    """
    from botocore.config import Config

    region = region or session.region_name
    if not region:
        raise ProvisionError(
            f"no AWS region for {service}",
            hint="set `region:` in the config, or AWS_DEFAULT_REGION, or a region in the "
            "AWS profile",
        )
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # total_max_attempts counts the first try; botocore's plain max_attempts does not.
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
    )
    return session.client(service, region_name=region, endpoint_url=endpoint_url(), config=config)


def caller_public_ip(*, timeout: float = PUBLIC_IP_TIMEOUT) -> str:
    """The caller's public IP address as seen from the internet (for the SSH ingress /32).

    Asks https://checkip.amazonaws.com (overridable with CLOUDSEND_PUBLIC_IP_URL, used by tests
    that have no internet). Any failure is a ProvisionError telling the user to set
    `ssh_cidrs:` themselves: we never fall back to 0.0.0.0/0.
    """
    url = os.environ.get(PUBLIC_IP_URL_ENV) or DEFAULT_PUBLIC_IP_URL
    hint = (
        "set `ssh_cidrs:` in the config to the address range you connect from "
        "(e.g. `ssh_cidrs: [203.0.113.7/32]`)"
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed scheme)
            body = resp.read(256).decode("ascii", "replace").strip()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProvisionError(
            f"could not detect your public IP address from {url}: {reason}", hint=hint
        ) from exc
    try:
        address = ipaddress.ip_address(body)
    except ValueError as exc:
        raise ProvisionError(
            f"could not detect your public IP address: {url} answered {body[:60]!r}", hint=hint
        ) from exc
    return str(address)


def caller_cidr(*, timeout: float = PUBLIC_IP_TIMEOUT) -> str:
    """The caller's public IP as a single-address CIDR: a.b.c.d/32 (or /128 for IPv6)."""
    address = ipaddress.ip_address(caller_public_ip(timeout=timeout))
    return f"{address}/{address.max_prefixlen}"
