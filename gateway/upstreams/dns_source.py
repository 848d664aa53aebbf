"""Replicas behind a DNS name: the pods of a Kubernetes headless Service, or any name
that lists a model's servers.

Each ask resolves the name again, A and AAAA together (or its SRV records, then
each target's A and AAAA), through the system resolver or the `nameservers`
given. Nothing is cached here: the interval is the only delay between a pod
going and its replica draining. What an answer means:

    addresses                          the replicas, `scheme://ip:port` ([ip] for IPv6)
    NXDOMAIN, or NOERROR with no       no replicas, from a resolver that works: a headless
      record of the type                 Service with no ready pod answers so; they drain
    timeout, SERVFAIL, REFUSED, no     an outage: `DiscoveryError`, and the pool keeps its
      resolver configuration             last replicas

Replicas are addresses, not names: the gateway connects to the pod the answer
named, and a pod that comes back with a new IP is a new replica (the old one
drains). With `https`, the replicas' certificates must then hold their IPs.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

from gateway.upstreams.endpoints import DiscoveryError, normalize_endpoint

ADDRESS_TYPES = ("A", "AAAA")


class DnsSource:
    """The replicas a DNS name lists; an `EndpointSource`."""

    def __init__(
        self,
        host: str,
        *,
        port: int | None,
        scheme: str = "http",
        srv: bool = False,
        timeout: float = 5.0,
        nameservers: Sequence[tuple[str, int]] = (),
    ) -> None:
        if (port is None) != srv:
            raise ValueError("a port for address records, none for SRV records")
        self.name = f"dns SRV {host}" if srv else f"dns {host} port {port}"
        self._host = host
        self._port = port
        self._scheme = scheme
        self._timeout = timeout
        self._nameservers = list(nameservers)
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def endpoints(self) -> list[str]:
        resolver = self._resolver_now()
        if self._port is None:
            targets = await self._srv_targets(resolver)
        else:
            targets = [(dns.name.from_text(self._host, None), self._port)]
        hosts = list(dict.fromkeys(host for host, _ in targets))
        answers = await asyncio.gather(
            *(self._query(resolver, host, kind) for host in hosts for kind in ADDRESS_TYPES),
            return_exceptions=True,
        )
        addresses: dict[dns.name.Name, list[str]] = {host: [] for host in hosts}
        for index, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                raise answer
            addresses[hosts[index // len(ADDRESS_TYPES)]].extend(answer)
        urls = [self._url(address, port) for host, port in targets for address in addresses[host]]
        return sorted(dict.fromkeys(urls))

    def _resolver_now(self) -> dns.asyncresolver.Resolver:
        """The resolver, made on first use: a missing /etc/resolv.conf is an outage then,
        not a gateway that cannot start."""
        if self._resolver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=not self._nameservers)
            except dns.exception.DNSException as exc:
                raise DiscoveryError(f"{self.name}: no resolver: {exc}") from exc
            if self._nameservers:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(address, port)
                    for address, port in self._nameservers
                ]
            # One ask in all, retries and every nameserver included.
            resolver.lifetime = self._timeout
            self._resolver = resolver
        return self._resolver

    async def _srv_targets(
        self, resolver: dns.asyncresolver.Resolver
    ) -> list[tuple[dns.name.Name, int]]:
        records = await self._records(resolver, dns.name.from_text(self._host, None), "SRV")
        # A target of "." says the service is decidedly not available (RFC 2782).
        return [
            (record.target, record.port)
            for record in records
            if isinstance(record, SRV) and record.target != dns.name.root
        ]

    async def _query(
        self, resolver: dns.asyncresolver.Resolver, host: dns.name.Name, kind: str
    ) -> list[str]:
        records = await self._records(resolver, host, kind)
        return [record.address for record in records if isinstance(record, A | AAAA)]

    async def _records(
        self, resolver: dns.asyncresolver.Resolver, host: dns.name.Name, kind: str
    ) -> list[dns.rdata.Rdata]:
        try:
            # The search list applies as in getaddrinfo: "vllm.ns" works inside a pod.
            answer = await resolver.resolve(host, kind, search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"{self.name}: {kind} {host}: {exc}") from exc
        return list(answer)

    def _url(self, address: str, port: int) -> str:
        shown = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        return normalize_endpoint(f"{self._scheme}://{shown}:{port}")
