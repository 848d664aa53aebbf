"""A real DNS server for the tests: Debian's dnsmasq on a free loopback port.

Its names come from a hosts file it re-reads on SIGHUP (`set_addresses`), so a
test can add and remove a headless Service's pods while the gateway runs.
It is authoritative for `test.` (`--local`): a name it does not know is
NXDOMAIN, as a cluster's DNS answers for a Service with no ready pod; a name
with only IPv4 addresses answers AAAA with NOERROR and no record. Nothing is
cached (`--local-ttl=0`, `--no-negcache`), so every question sees the file.
SRV records are fixed at start: `restart` with others.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.nameserver
import dns.resolver

from tests.servers import free_port, stop

DOMAIN = "test"
RELOAD_TIMEOUT_S = 10.0


def dnsmasq_binary() -> str:
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("dnsmasq is not installed: run `bash scripts/install-system-deps.sh`")
    return found


@dataclass(frozen=True)
class Srv:
    """One SRV record: `name` points at `target`:`port`."""

    name: str
    target: str
    port: int


@dataclass
class DnsServer:
    directory: Path
    port: int = field(default_factory=free_port)
    srv: Sequence[Srv] = ()
    proc: subprocess.Popen[bytes] | None = None
    addresses: dict[str, list[str]] = field(default_factory=dict)

    @property
    def nameserver(self) -> str:
        """The `nameservers` entry that points the gateway here."""
        return f"127.0.0.1:{self.port}"

    @property
    def hosts_path(self) -> Path:
        return self.directory / "dns-hosts"

    def start(self) -> None:
        self._write_hosts()
        log_path = self.directory / f"dnsmasq-{self.port}.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while not self._answers_as_written():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start:\n{log_path.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop answering: the gateway's questions time out, as in a resolver outage."""
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def restart(self, srv: Sequence[Srv] | None = None) -> None:
        self.stop()
        if srv is not None:
            self.srv = srv
        self.start()

    def set_addresses(self, addresses: Mapping[str, Sequence[str]]) -> None:
        """NAME -> addresses, replacing every name; returns once dnsmasq answers so."""
        self.addresses = {name: list(values) for name, values in addresses.items()}
        self._write_hosts()
        assert self.proc is not None, "dnsmasq is not running"
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while not self._answers_as_written():
            assert time.monotonic() < deadline, "dnsmasq did not re-read its hosts file"
            time.sleep(0.05)

    def resolve(self, name: str, kind: str = "A") -> list[str]:
        """What dnsmasq answers now ([] for NXDOMAIN or no record)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        resolver.lifetime = 2.0
        try:
            return sorted(record.to_text() for record in resolver.resolve(name, kind))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []

    def _answers_as_written(self) -> bool:
        try:
            return all(
                self.resolve(name, "A") == sorted(a for a in values if ":" not in a)
                for name, values in self.addresses.items()
            ) and all(self.resolve(record.name, "SRV") for record in self.srv)
        except dns.exception.DNSException:
            return False

    def _write_hosts(self) -> None:
        lines = [f"{a} {name}" for name, values in self.addresses.items() for a in values]
        self.hosts_path.write_text("".join(f"{line}\n" for line in lines))

    def _args(self) -> list[str]:
        args = [
            dnsmasq_binary(),
            "--keep-in-foreground",
            "--log-facility=-",
            "--no-resolv",
            "--no-hosts",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--addn-hosts={self.hosts_path}",
            f"--pid-file={self.directory / f'dnsmasq-{self.port}.pid'}",
            f"--local=/{DOMAIN}/",
            "--local-ttl=0",
            "--no-negcache",
            "--clear-on-reload",
        ]
        args += [f"--srv-host={r.name},{r.target},{r.port}" for r in self.srv]
        # As root, dnsmasq would switch to an unprivileged user who cannot read the
        # hosts file in the test's own directory; any other user keeps its identity.
        if os.geteuid() == 0:
            args.append(f"--user={getpass.getuser()}")
        return args


@contextmanager
def run_dns_server(
    directory: Path,
    addresses: Mapping[str, Sequence[str]] | None = None,
    srv: Sequence[Srv] = (),
) -> Iterator[DnsServer]:
    """dnsmasq answering ADDRESSES (name -> IPs) and SRV, stopped (whatever happens) on exit."""
    server = DnsServer(directory, srv=srv)
    server.addresses = {name: list(values) for name, values in (addresses or {}).items()}
    try:
        server.start()
        yield server
    finally:
        server.stop()
