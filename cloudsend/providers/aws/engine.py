"""Thin wrapper over the Pulumi Automation API: one stack per (project, stack) pair.

Everything Pulumi-specific the aws provider needs from the engine lives here: where the state
goes (a file:// backend under ~/.cloudsend/pulumi unless configured), how secrets are encrypted
(a generated passphrase file unless the user brings a passphrase or a KMS-style provider),
preview with per-resource diffs, up, destroy, refresh and outputs. Every Automation API failure
is turned into a ProvisionError carrying a hint; a missing `pulumi` CLI gets one clear message.

`pulumi.automation` is imported inside functions only: `cloudsend --help` must not pay for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudsend.errors import ProvisionError
from cloudsend.providers.aws.diff import ResourceChange, change_from_event, changes_from_events

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent, PulumiCommand, Stack

__all__ = [
    "Engine",
    "ResourceChange",
    "change_from_event",
    "changes_from_events",
    "default_state_dir",
    "ensure_passphrase_file",
    "is_shared_backend",
    "provision_error",
]

PASSPHRASE_ENV = "PULUMI_CONFIG_PASSPHRASE"
PASSPHRASE_FILE_ENV = "PULUMI_CONFIG_PASSPHRASE_FILE"

MISSING_CLI = "the pulumi CLI is needed for provider aws, and no `pulumi` command was found on PATH"
MISSING_CLI_HINT = (
    "install it with `curl -fsSL https://get.pulumi.com | sh` (or your OS package manager, or "
    "`brew install pulumi/tap/pulumi`) and make sure `pulumi version` works in this shell; "
    "`cloudsend preview --offline` works without it"
)
# How many lines of a failed pulumi command we show: enough for the real error, not a wall.
TAIL_LINES = 12
# Env var names whose values are redacted from any error text we build.
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSPHRASE", "KEY", "CREDENTIAL")


def backend_for_profile(url: str, profile: str | None) -> str:
    """An s3:// state backend read with the AWS profile of the config (Pulumi's `?profile=`
    query parameter), unless the URL names one already; other backends are left as they are."""
    if not profile or not url.startswith("s3://"):
        return url
    from urllib.parse import parse_qsl, quote

    base, _, query = url.partition("?")
    if any(key == "profile" for key, _ in parse_qsl(query)):
        return url
    extra = f"profile={quote(profile, safe='')}"
    return f"{base}?{query}&{extra}" if query else f"{base}?{extra}"


def is_shared_backend(url: str | None) -> bool:
    """A state backend other machines reach (s3://, gs://, azblob://, https://): not the
    default or another file:// one."""
    return bool(url) and not str(url).startswith("file://")


def default_state_dir() -> Path:
    """~/.cloudsend/pulumi: default file:// backend, passphrase files and workspace dirs."""
    return Path.home() / ".cloudsend" / "pulumi"


class Engine:
    """One Pulumi stack driven in-process through the Automation API (inline program)."""

    def __init__(
        self,
        project: str,
        stack: str,
        program: Callable[[], None],
        *,
        backend_url: str | None = None,
        secrets_provider: str | None = None,
        passphrase_file: Path | None = None,
        region: str | None = None,
        env: Mapping[str, str] | None = None,
        plugins: Mapping[str, str] | None = None,
    ) -> None:
        """`plugins` maps provider plugin name -> version to install before the first
        operation; the default is the aws plugin at the installed pulumi_aws version (inline
        programs do not get their plugins installed by the CLI)."""
        from cloudsend.providers.aws.spec import slug

        # Pulumi refuses project names with spaces and the like; the aws provider passes the
        # slug already (idempotent), any other caller gets the same name it would.
        self.project = slug(project)
        self.stack_name = stack
        self.program = program
        self.state_dir = default_state_dir()
        self.backend_url = backend_url or f"file://{self.state_dir}"
        self.secrets_provider = secrets_provider
        self.region = region
        self._env = dict(env or {})
        self._plugins = dict(_default_plugins() if plugins is None else plugins)
        default_file = self.state_dir / f"{self.project}-{stack}.passphrase"
        self._passphrase_path = passphrase_file or default_file
        # Kept only to redact it from error text; never logged, never part of a repr.
        self._secret_values: set[str] = set()
        self._stack: Stack | None = None

    def __repr__(self) -> str:
        return f"Engine({self.project!r}, {self.stack_name!r}, backend_url={self.backend_url!r})"

    # -- setup -------------------------------------------------------------------------------

    @property
    def uses_passphrase_file(self) -> bool:
        """True when secrets are encrypted with cloudsend's generated passphrase file."""
        if self.secrets_provider not in (None, "passphrase"):
            return False
        merged = {**os.environ, **self._env}
        # An empty PULUMI_CONFIG_PASSPHRASE is a deliberate choice in Pulumi: respect it.
        return PASSPHRASE_ENV not in merged and not merged.get(PASSPHRASE_FILE_ENV)

    @property
    def passphrase_file(self) -> Path | None:
        return self._passphrase_path if self.uses_passphrase_file else None

    def workspace_env(self) -> dict[str, str]:
        """Env vars handed to every pulumi command. Adds no passphrase value, only the path of
        the passphrase file: the SDK's workspace repr prints these."""
        env = {"PULUMI_SKIP_UPDATE_CHECK": "true", **self._env}
        if self.uses_passphrase_file:
            env[PASSPHRASE_FILE_ENV] = str(ensure_passphrase_file(self._passphrase_path))
        return env

    @property
    def shared(self) -> bool:
        """True for a state backend teammates reach too (s3://, Pulumi Cloud...): not file://."""
        return is_shared_backend(self.backend_url)

    def check_secrets(self) -> None:
        """A shared backend needs secrets every teammate can decrypt (the stack key is one):
        cloudsend's generated passphrase file exists on this machine only, so refuse it."""
        if self.shared and self.uses_passphrase_file:
            where = self.backend_url.split("?", 1)[0]  # a query may carry a profile or more
            raise ProvisionError(
                f"stack {self.stack_name} uses the shared state backend {where} but no "
                "secrets provider: cloudsend's generated passphrase lives in a file on this "
                "machine only, so a teammate could not decrypt the stack's secrets (its SSH key)",
                hint="set `secrets_provider: awskms://alias/NAME?region=REGION` in the config "
                f"(a KMS key the team may use), or export {PASSPHRASE_ENV} (or "
                f"{PASSPHRASE_FILE_ENV}) with a passphrase the team shares",
            )

    def stack(self) -> Stack:
        """Create or select the stack (once per Engine), set aws:region, install plugins."""
        if self._stack is not None:
            return self._stack
        self.check_secrets()
        env_vars = self.workspace_env()
        self._collect_secret_values()
        with self._errors("stack select"):
            from pulumi import automation as auto

            if self.backend_url.startswith("file://"):
                # pulumi refuses a file:// backend whose directory does not exist yet.
                local = self.backend_url[len("file://") :].split("?", 1)[0]
                Path(os.path.expanduser(local)).mkdir(parents=True, exist_ok=True)
            settings = auto.ProjectSettings(
                name=self.project,
                runtime="python",
                backend=auto.ProjectBackend(url=self.backend_url),
            )
            opts = auto.LocalWorkspaceOptions(
                work_dir=str(self._work_dir()),
                project_settings=settings,
                secrets_provider=self.secrets_provider or "passphrase",
                env_vars=env_vars,
                pulumi_command=_pulumi_command(),
            )
            stack = auto.create_or_select_stack(
                stack_name=self.stack_name,
                project_name=self.project,
                program=self.program,
                opts=opts,
            )
            if self.region:
                stack.set_config("aws:region", auto.ConfigValue(value=self.region))
            for name, version in self._plugins.items():
                stack.workspace.install_plugin(name, f"v{version.lstrip('v')}")
        self._stack = stack
        return stack

    def _work_dir(self) -> Path:
        # A stable dir (not the SDK's fresh temp dir per run) keeps Pulumi.<stack>.yaml, which
        # holds the stack's encryption salt; keyed by backend so two backends never share one.
        digest = hashlib.sha256(self.backend_url.encode()).hexdigest()[:8]
        path = self.state_dir / "workspaces" / f"{self.project}-{self.stack_name}-{digest}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _collect_secret_values(self) -> None:
        merged = {**os.environ, **self._env}
        for key, value in merged.items():
            if value and any(word in key.upper() for word in _SECRET_WORDS):
                self._secret_values.add(value)
        for path in (merged.get(PASSPHRASE_FILE_ENV), self.passphrase_file):
            if path:
                with contextlib.suppress(OSError):
                    self._secret_values.add(Path(path).read_text().strip())

    # -- operations --------------------------------------------------------------------------

    def preview(self, *, refresh: bool = False) -> list[ResourceChange]:
        """What `up` would do, one ResourceChange per resource (including unchanged ones).

        refresh: compare with what exists in the cloud now, not with the recorded state (an
        ended spot instance shows as created again, as `up` after its refresh would do).
        Pulumi SDKs without preview(refresh=) get a refresh first."""
        import inspect

        events: list[EngineEvent] = []
        stack = self.stack()
        extra: dict[str, Any] = {}
        if refresh:
            if "refresh" in inspect.signature(stack.preview).parameters:
                extra["refresh"] = True
            else:
                self.refresh()
        with self._errors("preview"):
            stack.preview(on_event=events.append, diff=True, color="never", **extra)
        return changes_from_events(events)

    def up(self, on_change: Callable[[ResourceChange], None] | None = None) -> dict[str, Any]:
        """Create/update the resources; returns the stack outputs as plain values."""
        relay = _Relay(on_change)
        stack = self.stack()
        with self._errors("up"):
            result = stack.up(on_event=relay, color="never", show_secrets=False)
        relay.reraise()
        return {key: out.value for key, out in result.outputs.items()}

    def destroy(self, on_change: Callable[[ResourceChange], None] | None = None) -> None:
        """Delete every resource of the stack (the stack and its history stay)."""
        relay = _Relay(on_change)
        stack = self.stack()
        with self._errors("destroy"):
            stack.destroy(on_event=relay, color="never", show_secrets=False)
        relay.reraise()

    def refresh(self) -> None:
        """Reconcile the recorded state with what really exists in the cloud."""
        stack = self.stack()
        with self._errors("refresh"):
            stack.refresh(color="never", show_secrets=False)

    def outputs(self) -> dict[str, Any]:
        """The outputs of the last successful `up`, as plain values ({} before any)."""
        stack = self.stack()
        with self._errors("stack output"):
            return {key: out.value for key, out in stack.outputs().items()}

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - translated below or re-raised unchanged
            error = provision_error(
                exc,
                stack=self.stack_name,
                project=self.project,
                backend_url=self.backend_url,
                action=action,
                secret_values=self._secret_values,
            )
            if error is None:
                raise
            # `from None`: the user gets one message, not a chained FileNotFoundError traceback.
            raise error from None


class _Relay:
    """Forwards engine events to a caller's on_change. The SDK calls on_event from its log
    watcher thread, where an exception would vanish: keep it and re-raise after the run."""

    def __init__(self, on_change: Callable[[ResourceChange], None] | None) -> None:
        self.on_change = on_change
        self.error: BaseException | None = None

    def __call__(self, event: EngineEvent) -> None:
        if self.on_change is None or self.error is not None:
            return
        change = change_from_event(event)
        if change is not None:
            try:
                self.on_change(change)
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = exc

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


# -- passphrase --------------------------------------------------------------------------------


def ensure_passphrase_file(path: Path) -> Path:
    """Create `path` holding a random passphrase (mode 0600 from the first byte), or reuse it.

    The content is written to a private temp file and hard-linked into place, so the real
    file never exists half-written and two concurrent cloudsends agree on one passphrase.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a strange umask must not leave it unreadable to us
            os.write(fd, secrets.token_urlsafe(32).encode())  # no newline: nothing to trim
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: its passphrase is the one
        finally:
            tmp.unlink()
    st = path.stat()
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        path.chmod(0o600)  # someone loosened it; the passphrase decrypts the stack's secrets
    if st.st_size == 0:
        raise ProvisionError(
            f"the Pulumi passphrase file {path} is empty",
            hint="restore it from a backup, or set PULUMI_CONFIG_PASSPHRASE; a new passphrase "
            "cannot decrypt a stack created with the old one",
        )
    return path


# -- errors ------------------------------------------------------------------------------------


def provision_error(
    exc: BaseException,
    *,
    stack: str,
    project: str | None = None,
    backend_url: str | None = None,
    action: str = "command",
    secret_values: Iterable[str] = (),
) -> ProvisionError | None:
    """The ProvisionError for an Automation API failure, or None if `exc` is not one."""
    from pulumi.automation import errors as auto_errors

    if isinstance(exc, ProvisionError):
        return exc
    if isinstance(exc, FileNotFoundError) and _is_pulumi_binary(exc.filename):
        return ProvisionError(MISSING_CLI, hint=MISSING_CLI_HINT)
    if isinstance(exc, subprocess.CalledProcessError):
        argv = exc.cmd[0] if isinstance(exc.cmd, (list, tuple)) and exc.cmd else exc.cmd
        if _is_pulumi_binary(argv):  # `pulumi version`, run by the SDK, failed
            return ProvisionError(
                f"the pulumi CLI failed to start (`pulumi version` exited {exc.returncode})",
                hint="check that `pulumi version` works in this shell; reinstall it if not",
            )
    if isinstance(exc, auto_errors.InvalidVersionError):
        return ProvisionError(
            f"the installed pulumi CLI is too old: {exc}",
            hint="upgrade it: `curl -fsSL https://get.pulumi.com | sh` or your package manager",
        )
    if isinstance(exc, auto_errors.ConcurrentUpdateError):
        return ProvisionError(
            f"stack {stack} is locked by another update",
            hint="wait for the other cloudsend/pulumi run to finish and try again; if that run "
            "crashed, its lock stays: remove it with `pulumi cancel --stack "
            f"{project + '/' if project else ''}{stack}`"
            + (f" (with PULUMI_BACKEND_URL={backend_url})" if backend_url else ""),
        )
    if isinstance(exc, auto_errors.CommandError):
        tail = _redact(_command_tail(str(exc)), secret_values)
        what = (
            "the Pulumi program raised an error"
            if isinstance(exc, auto_errors.InlineSourceRuntimeError)
            else f"pulumi {action} failed for stack {stack}"
        )
        return ProvisionError(
            f"{what}:\n{tail}" if tail else what,
            hint="fix the cause above and run the command again; nothing is re-created that "
            "already exists",
        )
    return None


def _is_pulumi_binary(name: object) -> bool:
    return isinstance(name, (str, os.PathLike)) and os.path.basename(os.fspath(name)) in (
        "pulumi",
        "pulumi.exe",
    )


def _command_tail(text: str) -> str:
    """The useful end of a CommandError: the SDK only keeps "code/stdout/stderr" as text."""
    head, _, stderr = text.rpartition("\n stderr: ")
    stdout = head.partition("\n stdout: ")[2] if head else ""
    lines = [line for line in stderr.splitlines() if line.strip()][-TAIL_LINES:]
    # Resource errors are printed under "Diagnostics:" on stdout; stderr only says it failed.
    if "Diagnostics:" in stdout:
        diag_lines: list[str] = []
        for line in stdout.split("Diagnostics:", 1)[1].splitlines():
            if line.strip() and not line[0].isspace():
                break  # the next section ("Resources:", "Outputs:", ...)
            if line.strip() and len(diag_lines) < TAIL_LINES:
                diag_lines.append(line)
        lines = [*diag_lines, *[line for line in lines if line not in diag_lines]]
    elif not lines:
        lines = [line for line in stdout.splitlines() if line.strip()][-TAIL_LINES:]
    return "\n".join(lines)


def _redact(text: str, secret_values: Iterable[str]) -> str:
    for value in sorted(set(secret_values), key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "[secret]")
    return text


# -- CLI and plugins ---------------------------------------------------------------------------


def _pulumi_command() -> PulumiCommand | None:
    """The get.pulumi.com installer puts the CLI in ~/.pulumi/bin and only edits shell rc
    files; use it from there when PATH does not have it yet. None = `pulumi` from PATH."""
    if shutil.which("pulumi") is None:
        root = Path.home() / ".pulumi"
        if os.access(root / "bin" / "pulumi", os.X_OK):
            from pulumi.automation import PulumiCommand

            return PulumiCommand(root=str(root))
    return None


def _default_plugins() -> dict[str, str]:
    try:
        return {"aws": importlib.metadata.version("pulumi_aws")}
    except importlib.metadata.PackageNotFoundError:
        return {}
