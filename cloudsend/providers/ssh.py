"""The `ssh` provider: machines the user already has, reached with Fabric.

Each `hosts:` entry is one host. Its root dir defaults to ~/.cloudsend/<project>/ on that
machine (an absolute path is needed by the agent, so the home dir is probed at first contact);
`cloudsend down` removes it unless --keep.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cloudsend.config.models import Config, SshHostConfig
from cloudsend.errors import CloudsendError, ProvisionError
from cloudsend.providers.base import Host, HostsNotCleaned, Machines, Preview
from cloudsend.providers.roots import host_root, remove_root


class SshProvider:
    name = "ssh"
    owns_machines = False
    machines: Machines | None = None  # no machines of its own
    needs_modules: tuple[str, ...] = ()

    def __init__(self, config: Config) -> None:
        self.config = config
        self.known_hosts = config.state_dir / "known_hosts"
        self.unreachable: dict[str, str] = {}
        self.first_contacts: dict[str, str] = {}  # host name -> the key pinned on first contact

    def _names(self) -> list[str]:
        entries = self.config.ssh.hosts
        names = []
        for i, h in enumerate(entries):
            same_addr = sum(1 for e in entries if e.address == h.address)
            same_port = sum(1 for e in entries if (e.address, e.port) == (h.address, h.port))
            if same_addr == 1:
                names.append(h.address)
            elif same_port == 1:
                names.append(f"{h.address}:{h.port}")
            else:
                names.append(f"{h.address}:{h.port}#{i}")
        return names

    def _connect(self, name: str, entry: SshHostConfig) -> Host:
        from cloudsend.transport.ssh import SshTarget, SshTransport

        target = SshTarget(
            name=name,
            address=entry.address,
            port=entry.port,
            user=entry.user,
            key=entry.key,
            known_hosts=self.known_hosts,
            host_key_policy=self.config.ssh.host_key_policy,
            user_known_hosts=True,  # machines the user may have reached with ssh already
        )
        transport = SshTransport(target)
        try:
            info = transport.probe()
        except CloudsendError:
            transport.close()
            raise
        if transport.first_contact:
            self.first_contacts[name] = transport.first_contact
        if not info.get("python"):
            transport.close()
            raise ProvisionError(
                f"host {name}: python3 is not installed there (the cloudsend agent needs it)",
                hint="install python3 on the host (apt-get install python3)",
            )
        root = host_root(entry.root, str(info["home"]), self.config.project_name)
        return Host(
            name=name,
            cpus=entry.cpus or int(info["cpus"]),
            root=root,
            python=str(info.get("python") or "python3"),
            transport=transport,
            info={
                "provider": "ssh",
                "address": entry.address,
                "port": entry.port,
                "user": entry.user,
            },
        )

    def up(self) -> list[Host]:
        """Connect to every host in parallel; unreachable ones are left out with a notice."""
        pairs = list(zip(self._names(), self.config.ssh.hosts, strict=True))
        hosts: list[Host] = []
        errors: dict[str, CloudsendError] = {}
        self.first_contacts = {}

        def one(pair: tuple[str, SshHostConfig]) -> None:
            try:
                hosts.append(self._connect(*pair))
            except CloudsendError as exc:
                errors[pair[0]] = exc

        with ThreadPoolExecutor(max_workers=min(16, len(pairs) or 1)) as pool:
            list(pool.map(one, pairs))
        self.unreachable = {name: str(exc) for name, exc in errors.items()}
        if errors and not hosts:
            first = next(iter(errors.values()))
            raise ProvisionError(
                f"none of the {len(pairs)} ssh host(s) could be used: {first.message}",
                hint=first.hint or "check address, port, user and key in hosts:",
            )
        order = {name: i for i, (name, _) in enumerate(pairs)}
        return sorted(hosts, key=lambda h: order[h.name])

    def check_down(self, keep: bool) -> None:
        """Both kinds of down can be done here (keep: the hosts' root dirs stay)."""

    def down(self, hosts: list[Host], keep: bool = False) -> None:
        """Remove each host's root dir (unless keep), the hosts in parallel: only a root whose
        marker names this project (providers.roots); any other is reported, not deleted.
        With maestro: remote, the project's run keys leave their authorized_keys (also with
        keep)."""
        remote = self.config.maestro == "remote"
        if (keep and not remote) or not hosts:
            return
        failed: dict[str, str] = {}
        project = self.config.project_name

        def remove(host: Host) -> None:
            if remote:
                from cloudsend.maestro import runkey

                try:
                    runkey.remove(host.transport, runkey.run_tag(project))
                except CloudsendError as exc:
                    failed[host.name] = f"could not remove the run key: {exc.message[:200]}"
                    return
            if keep:
                return
            try:
                outcome = remove_root(host, project)
            except CloudsendError as exc:
                failed[host.name] = f"could not remove {host.root}: {exc.message[:200]}"
                return
            if outcome is not None:
                failed[host.name] = outcome

        with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
            list(pool.map(remove, hosts))
        if failed:
            raise HostsNotCleaned(failed)

    def attach(self) -> list[Host]:
        """The hosts, creating nothing (here the same as up)."""
        return self.up()

    def check(self) -> list[str]:
        return []  # the hosts' CPUs are only known once reached

    def preview(self, *, offline: bool = False, enforce_budget: bool = False) -> Preview:
        return Preview("ssh", len(self.config.ssh.hosts))

    def notices(self) -> list[str]:
        notes = [
            f"host {name} is left out: {why.splitlines()[0]}"
            for name, why in self.unreachable.items()
        ]
        where = _shown(self.known_hosts)
        notes += [
            f"host {name}: first contact, pinned {key} in {where}"
            for name, key in sorted(self.first_contacts.items())
        ]
        if self.config.instances:
            notes.append("instances: is ignored by provider ssh (hosts: lists the machines)")
        return notes


def _shown(path: Path) -> str:
    """`path` relative to the working dir when it is under it (.cloudsend/known_hosts)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
