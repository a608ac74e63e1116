"""providers/aws engine + diff: the Automation API wrapper and the preview diff renderings.

What runs here without the pulumi CLI: the missing-CLI message through the real SDK, the
passphrase file, the error translation (real SDK error classes, and a stub `pulumi` executable
that only prints what the real CLI prints on failure, to drive the SDK's own subprocess and
error-classification path), event parsing from real `pulumi.automation.events` objects and the
table/JSON renderings. Tests that need the real CLI are marked `pulumi_cli` and skipped here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pulumi.automation import (
    CommandResult,
    DiagnosticEvent,
    DiffKind,
    EngineEvent,
    OpType,
    PreludeEvent,
    PropertyDiff,
    ResourcePreEvent,
    ResOutputsEvent,
    StepEventMetadata,
    SummaryEvent,
)
from pulumi.automation import errors as auto_errors

from cloudsend.errors import ProvisionError
from cloudsend.providers.aws.diff import (
    change_from_event,
    changes_to_json,
    name_from_urn,
    summary_counts,
)
from cloudsend.providers.aws.engine import (
    Engine,
    ResourceChange,
    changes_from_events,
    ensure_passphrase_file,
    provision_error,
)
from cloudsend.ui import changes_table

NO_CLI = shutil.which("pulumi") is None
NO_CLI_REASON = "the pulumi CLI is not installed (it cannot be downloaded here)"


def _program() -> None:
    import pulumi

    pulumi.export("greeting", "hello")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME (state dir, passphrase files) and no passphrase from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_BACKEND_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def no_pulumi_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def _all_text(exc: BaseException) -> str:
    """Everything a user or a log could see of an exception, traceback included."""
    hint = getattr(exc, "hint", "") or ""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + repr(exc) + hint


# -- missing CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize("plugins", [None, {}])
def test_missing_cli_is_one_clear_provision_error(
    home: Path, no_pulumi_on_path: Path, plugins: dict[str, str] | None
) -> None:
    engine = Engine("demo", "dev", _program, region="eu-west-1", plugins=plugins)
    with pytest.raises(ProvisionError) as info:
        engine.preview()
    exc = info.value
    assert type(exc) is ProvisionError
    text = str(exc)
    assert "pulumi CLI is needed for provider aws" in text
    assert "curl -fsSL https://get.pulumi.com | sh" in text and "brew" in text
    assert "cloudsend preview --offline" in text
    # No chained FileNotFoundError: the CLI shows one message, and a traceback has no "During
    # handling of the above exception" part either.
    assert exc.__cause__ is None and exc.__suppress_context__
    full = _all_text(exc)
    assert "FileNotFoundError" not in full and "Errno" not in full
    passphrase = (home / ".cloudsend/pulumi/demo-dev.passphrase").read_text()
    assert passphrase not in full


def test_every_operation_reports_the_missing_cli(home: Path, no_pulumi_on_path: Path) -> None:
    engine = Engine("demo", "dev", _program, plugins={})
    for call in (engine.up, engine.destroy, engine.refresh, engine.outputs, engine.stack):
        with pytest.raises(ProvisionError, match="get.pulumi.com"):
            call()


def test_engine_modules_import_neither_pulumi_nor_rich() -> None:
    code = (
        "import sys, cloudsend.providers.aws.engine, cloudsend.providers.aws.diff\n"
        "print([m for m in ('pulumi', 'rich') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- passphrase --------------------------------------------------------------------------------


def test_passphrase_file_is_0600_from_the_start_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "demo-dev.passphrase"
    old_umask = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        assert ensure_passphrase_file(path) == path
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert len(first) >= 40 and first.strip() == first
    ensure_passphrase_file(path)
    assert path.read_text() == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    path.chmod(0o644)
    ensure_passphrase_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_concurrent_creators_agree_on_one_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "p.passphrase"
    seen: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        seen.append(ensure_passphrase_file(path).read_text())

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and len(set(seen)) == 1


def test_empty_passphrase_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "p.passphrase"
    path.touch(mode=0o600)
    with pytest.raises(ProvisionError, match="is empty"):
        ensure_passphrase_file(path)
    assert path.read_text() == ""


def test_workspace_env_passes_the_file_path_never_the_passphrase(home: Path) -> None:
    engine = Engine("demo", "dev", _program, env={"AWS_PROFILE": "team"}, plugins={})
    env = engine.workspace_env()
    path = home / ".cloudsend/pulumi/demo-dev.passphrase"
    assert engine.passphrase_file == path
    assert env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(path)
    assert env["AWS_PROFILE"] == "team" and "PULUMI_CONFIG_PASSPHRASE" not in env
    passphrase = path.read_text()
    assert passphrase not in json.dumps(env) and passphrase not in repr(engine)
    custom = Engine("demo", "dev", _program, passphrase_file=home / "mine", plugins={})
    assert custom.workspace_env()["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(home / "mine")


def test_passphrase_from_environment_is_preferred(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "from-the-env")
    engine = Engine("demo", "dev", _program, plugins={})
    env = engine.workspace_env()
    assert engine.passphrase_file is None
    # Inherited by the pulumi subprocess from os.environ; not copied into the workspace env,
    # whose repr the SDK prints.
    assert "PULUMI_CONFIG_PASSPHRASE" not in env and "PULUMI_CONFIG_PASSPHRASE_FILE" not in env
    assert not (home / ".cloudsend/pulumi/demo-dev.passphrase").exists()
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(home / "theirs"))
    assert Engine("demo", "dev", _program, plugins={}).passphrase_file is None


def test_secrets_provider_needs_no_passphrase(home: Path) -> None:
    kms = "awskms://alias/cloudsend?region=eu-west-1"
    engine = Engine("demo", "dev", _program, secrets_provider=kms, plugins={})
    assert engine.passphrase_file is None
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" not in engine.workspace_env()
    assert not (home / ".cloudsend/pulumi").exists()


# -- error translation -------------------------------------------------------------------------

LOCKED = (
    "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) "
    "to end or delete the lock file with `pulumi cancel`.\n  file:///x/.pulumi/locks/"
    "organization/demo/dev/b1.json: created by me@box (pid 42) at 2025-01-01T00:00:00Z"
)


def _command_error(stdout: str, stderr: str, code: int = 255) -> auto_errors.CommandError:
    # The SDK's own classifier, as it runs on every failed pulumi command.
    return auto_errors.create_command_error(CommandResult(stdout=stdout, stderr=stderr, code=code))


def test_locked_stack() -> None:
    exc = _command_error("", LOCKED)
    assert isinstance(exc, auto_errors.ConcurrentUpdateError)
    error = provision_error(exc, stack="dev", project="demo", backend_url="file:///x")
    assert error is not None
    assert error.message == "stack dev is locked by another update"
    assert error.hint is not None and "pulumi cancel --stack demo/dev" in error.hint
    assert "PULUMI_BACKEND_URL=file:///x" in error.hint


def test_command_error_shows_the_diagnostics_and_stderr_tail_redacted() -> None:
    stdout = (
        "Previewing update (dev):\n  + aws:ec2:Instance web create\n"
        "Diagnostics:\n  aws:ec2:Instance (web):\n    error: InvalidAMIID.NotFound: ami-123\n"
        "\nResources:\n    + 1 to create\n"
    )
    stderr = "\n".join(f"line {i}" for i in range(40)) + "\nerror: hunter2-secret leaked here"
    error = provision_error(
        _command_error(stdout, stderr), stack="dev", action="up", secret_values={"hunter2-secret"}
    )
    assert error is not None
    text = str(error)
    assert text.startswith("pulumi up failed for stack dev:")
    assert "InvalidAMIID.NotFound: ami-123" in text
    assert "to create" not in text  # the Resources section is not part of the diagnostics
    assert "line 39" in text and "line 5\n" not in text  # only the tail of stderr
    assert "hunter2-secret" not in text and "[secret]" in text


def test_program_errors_and_unrelated_exceptions() -> None:
    exc = _command_error("python inline source runtime error: boom", "error: an error occurred")
    assert isinstance(exc, auto_errors.InlineSourceRuntimeError)
    error = provision_error(exc, stack="dev")
    assert error is not None and "Pulumi program raised an error" in error.message
    assert provision_error(ValueError("x"), stack="dev") is None
    other = FileNotFoundError(2, "No such file or directory", "/etc/missing.yaml")
    assert provision_error(other, stack="dev") is None
    cli = FileNotFoundError(2, "No such file or directory", "pulumi")
    assert "preview --offline" in str(provision_error(cli, stack="dev"))
    old = auto_errors.InvalidVersionError("minimum version 3.181.0")
    assert "too old" in str(provision_error(old, stack="dev"))


def _stub_cli(bin_dir: Path, *, stderr: str = "", shell: str = "") -> None:
    """A `pulumi` that reports a version and fails every other command the way the real CLI
    does (printing `stderr` verbatim, or running `shell` with stdout to stderr): drives the
    SDK's own subprocess + error classification, not a fake of pulumi's behaviour."""
    message = bin_dir / "stderr.txt"
    message.write_text(stderr)
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        # Never recurse into itself, whatever the failure text contains.
        '[ -n "$STUB_PULUMI" ] && exit 99\nexport STUB_PULUMI=1\n'
        'for a in "$@"; do [ "$a" = version ] && { echo v3.272.0; exit 0; }; done\n'
        f"/bin/cat {shlex.quote(str(message))} >&2\n{shell} >&2\nexit 255\n"
    )
    script.chmod(0o755)


def test_locked_stack_through_the_sdk(home: Path, no_pulumi_on_path: Path) -> None:
    _stub_cli(no_pulumi_on_path, stderr=LOCKED)
    with pytest.raises(ProvisionError) as info:
        Engine("demo", "dev", _program, plugins={}).preview()
    assert str(info.value).startswith("stack dev is locked by another update")
    assert "CommandError" not in _all_text(info.value)


def test_cli_from_the_installer_dir_when_path_lacks_it(home: Path, no_pulumi_on_path: Path) -> None:
    # get.pulumi.com installs to ~/.pulumi/bin and only edits shell rc files.
    installer_bin = home / ".pulumi" / "bin"
    installer_bin.mkdir(parents=True)
    _stub_cli(installer_bin, stderr=LOCKED)
    with pytest.raises(ProvisionError, match="locked by another update"):
        Engine("demo", "dev", _program, plugins={}).preview()


def test_cli_that_cannot_report_its_version(home: Path, no_pulumi_on_path: Path) -> None:
    script = no_pulumi_on_path / "pulumi"
    script.write_text("#!/bin/sh\necho 'segfault' >&2\nexit 2\n")
    script.chmod(0o755)
    with pytest.raises(ProvisionError, match="failed to start") as info:
        Engine("demo", "dev", _program, plugins={}).preview()
    assert "CalledProcessError" not in _all_text(info.value)


def test_passphrase_never_appears_in_error_text(
    home: Path, no_pulumi_on_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worst case: a CLI that prints the passphrase file and the env passphrase on failure.
    _stub_cli(
        no_pulumi_on_path,
        shell='echo "error: bad $(/bin/cat "$PULUMI_CONFIG_PASSPHRASE_FILE")'
        ' $AWS_SECRET_ACCESS_KEY"',
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "AKIAsecretvalue123")
    with pytest.raises(ProvisionError) as info:
        Engine("demo", "dev", _program, plugins={}).preview()
    passphrase = (home / ".cloudsend/pulumi/demo-dev.passphrase").read_text()
    text = _all_text(info.value)
    assert "error: bad [secret] [secret]" in text
    assert passphrase not in text and "AKIAsecretvalue123" not in text


# -- events -> changes -------------------------------------------------------------------------

URN = "urn:pulumi:dev::demo::{}::{}"


def _pre(seq: int, op: OpType, rtype: str, name: str, **meta: Any) -> EngineEvent:
    metadata = StepEventMetadata(
        op=op, urn=URN.format(rtype, name), type=rtype, provider="", **meta
    )
    return EngineEvent(sequence=seq, timestamp=0, resource_pre_event=ResourcePreEvent(metadata))


def _events() -> list[EngineEvent]:
    replace_meta: dict[str, Any] = {
        "keys": ["ami"],
        "diffs": ["ami", "tags"],
        "detailed_diff": {
            "ami": PropertyDiff(DiffKind.UPDATE_REPLACE, True),
            "tags": PropertyDiff(DiffKind.UPDATE, True),
        },
    }
    return [
        EngineEvent(0, 0, prelude_event=PreludeEvent(config={})),
        _pre(1, OpType.SAME, "pulumi:pulumi:Stack", "demo-dev"),
        _pre(2, OpType.CREATE, "pulumi:providers:aws", "default_7_51_1"),
        _pre(3, OpType.CREATE, "aws:ec2/vpc:Vpc", "net"),
        _pre(
            4,
            OpType.UPDATE,
            "aws:ec2/securityGroup:SecurityGroup",
            "ssh",
            diffs=["ingress"],
            detailed_diff={"ingress[0].cidrBlocks[0]": PropertyDiff(DiffKind.UPDATE, True)},
        ),
        _pre(5, OpType.CREATE_REPLACEMENT, "aws:ec2/instance:Instance", "demo-0-0", **replace_meta),
        _pre(6, OpType.REPLACE, "aws:ec2/instance:Instance", "demo-0-0", **replace_meta),
        _pre(7, OpType.DELETE_REPLACED, "aws:ec2/instance:Instance", "demo-0-0", **replace_meta),
        _pre(8, OpType.DELETE, "aws:ec2/keyPair:KeyPair", "old-key"),
        # Shaped exactly like a line of the CLI's event log.
        EngineEvent.from_json(
            {
                "sequence": 9,
                "timestamp": 0,
                "resourcePreEvent": {
                    "metadata": {
                        "op": "update",
                        "urn": URN.format("aws:iam/role:Role", "runner"),
                        "type": "aws:iam/role:Role",
                        "provider": "",
                        "diffs": [],
                        "detailedDiff": {"tags.owner": {"diffKind": "add", "inputDiff": True}},
                    }
                },
            }
        ),
        EngineEvent(
            10,
            0,
            res_outputs_event=ResOutputsEvent(
                StepEventMetadata(OpType.CREATE, URN.format("aws:ec2/vpc:Vpc", "net"), "x", "")
            ),
        ),
        EngineEvent(11, 0, diagnostic_event=DiagnosticEvent("warning: x", "never", "warning")),
        EngineEvent(12, 0, summary_event=SummaryEvent(False, 1, {OpType.CREATE: 1}, {})),
    ]


def test_changes_from_real_sdk_events() -> None:
    changes = changes_from_events(_events())
    by_name = {c.name: c for c in changes}
    assert [c.name for c in changes] == [
        "demo-dev", "net", "ssh", "demo-0-0", "old-key", "runner",
    ]  # fmt: skip
    assert "default_7_51_1" not in by_name  # engine plumbing, hidden like `pulumi preview` does
    assert by_name["demo-dev"].op == "same"
    assert by_name["net"] == ResourceChange(
        op="create", type="aws:ec2/vpc:Vpc", name="net", urn=URN.format("aws:ec2/vpc:Vpc", "net")
    )
    ssh = by_name["ssh"]
    assert ssh.op == "update" and ssh.changed_properties == ["ingress"]
    assert ssh.detailed_diff == {"ingress[0].cidrBlocks[0]": "update"}
    inst = by_name["demo-0-0"]  # three engine steps, one replace
    assert inst.op == "replace" and inst.replace_keys == ["ami"]
    assert inst.changed_properties == ["ami", "tags"]
    assert inst.detailed_diff == {"ami": "update-replace", "tags": "update"}
    assert by_name["old-key"].op == "delete" and by_name["old-key"].changed_properties == []
    runner = by_name["runner"]  # no `diffs`: the detailed diff paths stand in
    assert runner.changed_properties == ["tags.owner"] and runner.detailed_diff == {
        "tags.owner": "add"
    }
    assert all(c.status == "planned" for c in changes)


def test_change_from_event_statuses_and_urn_names() -> None:
    events = _events()
    started = change_from_event(events[3])
    assert started is not None and (started.op, started.status) == ("create", "started")
    done = change_from_event(events[10])
    assert done is not None and (done.name, done.status) == ("net", "done")
    assert change_from_event(events[0]) is None and change_from_event(events[2]) is None
    assert name_from_urn("urn:pulumi:dev::demo::a:b:C$aws:ec2/vpc:Vpc::odd::name") == "odd::name"


def test_summary_counts_and_json() -> None:
    changes = changes_from_events(_events())
    counts = summary_counts(changes)
    assert counts == {"replace": 1, "delete": 1, "create": 1, "update": 2, "same": 1}
    assert list(counts) == ["replace", "delete", "create", "update", "same"]
    rows = changes_to_json(changes)
    assert json.loads(json.dumps(rows)) == rows
    assert [r["op"] for r in rows] == ["replace", "delete", "create", "update", "update", "same"]
    assert rows[0]["replace_keys"] == ["ami"] and rows[0]["name"] == "demo-0-0"
    assert summary_counts([]) == {}


def _render(table: Any) -> str:
    from rich.console import Console

    console = Console(record=True, width=200, color_system=None)
    console.print(table)
    return console.export_text()


def test_changes_table_renders_ops_properties_and_counts() -> None:
    changes = changes_from_events(_events())
    text = _render(changes_table(changes, title="stack demo/dev"))
    assert "stack demo/dev" in text
    for needle in ("+- replace", "- delete", "+ create", "~ update", "aws:ec2/instance:Instance"):
        assert needle in text
    assert "ami (forces replacement), tags" in text
    assert "ingress" in text and "tags.owner" in text
    assert text.index("replace") < text.index("delete") < text.index("+ create")
    assert "demo-dev" not in text  # unchanged resources hidden by default...
    assert "1 replace, 1 delete, 1 create, 2 update, 1 same" in text  # ...but counted
    assert "demo-dev" in _render(changes_table(changes, show_same=True))
    assert "no resources" in _render(changes_table([]))


# -- on_change relay ---------------------------------------------------------------------------


def test_on_change_errors_surface_in_the_callers_thread() -> None:
    from cloudsend.providers.aws.engine import _Relay

    seen: list[ResourceChange] = []
    relay = _Relay(seen.append)
    for event in _events():
        relay(event)
    assert [c.status for c in seen][:2] == ["started", "started"] and seen[-1].status == "done"

    def explode(change: ResourceChange) -> None:
        raise RuntimeError(f"ui broke on {change.name}")

    failing = _Relay(explode)
    watcher = threading.Thread(target=failing, args=(_events()[3],))  # like the SDK's
    watcher.start()
    watcher.join(5)
    with pytest.raises(RuntimeError, match="ui broke on net"):
        failing.reraise()


# -- with the real pulumi CLI ------------------------------------------------------------------


@pytest.fixture
def backend(home: Path) -> Iterator[str]:
    yield f"file://{home / 'backend'}"


def _secret_program() -> None:
    import pulumi

    pulumi.export("greeting", "hello")
    pulumi.export("token", pulumi.Output.secret("s3cr3t-value"))


@pytest.mark.timeout(600)
@pytest.mark.pulumi_cli
@pytest.mark.skipif(NO_CLI, reason=NO_CLI_REASON)
def test_real_preview_up_outputs_destroy(home: Path, backend: str) -> None:
    engine = Engine("cstest", "dev", _secret_program, backend_url=backend, plugins={})
    planned = engine.preview()
    assert [(c.op, c.type) for c in planned] == [("create", "pulumi:pulumi:Stack")]
    seen: list[ResourceChange] = []
    assert engine.up(on_change=seen.append) == {"greeting": "hello", "token": "s3cr3t-value"}
    assert {c.status for c in seen} >= {"started", "done"}
    passphrase = home / ".cloudsend/pulumi/cstest-dev.passphrase"
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    state = "".join(p.read_text() for p in (home / "backend").rglob("*.json"))
    assert "s3cr3t-value" not in state  # encrypted with the generated passphrase
    # A fresh Engine (a later cloudsend run) reuses the passphrase and reads the outputs.
    again = Engine("cstest", "dev", _secret_program, backend_url=backend, plugins={})
    assert again.outputs()["token"] == "s3cr3t-value"
    assert summary_counts(again.preview()) == {"same": 1}
    again.refresh()
    again.destroy()
    assert again.outputs() == {}


@pytest.mark.timeout(600)
@pytest.mark.pulumi_cli
@pytest.mark.skipif(NO_CLI, reason=NO_CLI_REASON)
def test_real_program_error_is_a_provision_error(home: Path, backend: str) -> None:
    def broken() -> None:
        raise ValueError("no instances configured")

    engine = Engine("cstest", "broken", broken, backend_url=backend, plugins={})
    with pytest.raises(ProvisionError) as info:
        engine.preview()
    assert "no instances configured" in str(info.value)
    passphrase = (home / ".cloudsend/pulumi/cstest-broken.passphrase").read_text()
    assert passphrase not in _all_text(info.value)
