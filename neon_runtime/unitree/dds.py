"""CycloneDDS participants bound to one network interface and domain, and the G1's topics on them.

The G1 talks on domain 0 of the interface wired to it (192.168.123.x), as Unitree's SDKs do: Cyclone's default QoS,
multicast discovery. Everything else (tests, simulators) belongs on `lo` in a domain of its own with multicast off,
where discovery goes by unicast to 127.0.0.1: `loopback()` (which also meets a participant that Unitree's SDK set up
on `lo`, as its MuJoCo simulator does). Domain 0 is never taken by default; only `robot=True` opens it, so nothing
joins the robot's domain by accident.

Cyclone holds one configuration per domain in a process: a second participant in the same domain shares the first
one's Domain (and must ask for the same interface and discovery).
"""

import random
import socket
import threading
from xml.sax.saxutils import quoteattr

from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from neon_runtime.unitree.idl import TOPIC_TYPES

ROBOT_DOMAIN = 0  # the G1's
MAX_DOMAIN = 232  # highest id whose RTPS ports (7400 + 250 * id + offsets) still fit in 16 bits
LOOPBACK_DOMAINS = range(1, 201)  # loopback() draws from these
MAX_PARTICIPANTS_PER_HOST = 32  # unicast discovery probes this many participant slots on each peer

_domains: dict[int, tuple[str, Domain]] = {}  # domain id -> (its configuration, the Domain that holds it)
_domains_lock = threading.Lock()


def interfaces() -> list[str]:
    """This machine's network interface names."""
    return [name for _, name in socket.if_nameindex()]


def config_xml(domain_id: int, interface: str, *, multicast: bool = True, peers: tuple[str, ...] = ()) -> str:
    """CycloneDDS 0.10 configuration: traffic on `interface` only; without multicast, discovery by unicast to `peers`."""
    lines = [
        "<CycloneDDS>",
        f'  <Domain Id="{domain_id}">',
        "    <General>",
        "      <Interfaces>",
        f'        <NetworkInterface name={quoteattr(interface)} multicast="{"default" if multicast else "false"}"/>',
        "      </Interfaces>",
    ]
    if not multicast:
        lines.append("      <AllowMulticast>false</AllowMulticast>")
    lines.append("    </General>")
    if peers:
        lines += [
            "    <Discovery>",
            "      <ParticipantIndex>auto</ParticipantIndex>",
            f"      <MaxAutoParticipantIndex>{MAX_PARTICIPANTS_PER_HOST - 1}</MaxAutoParticipantIndex>",
            "      <Peers>",
            *(f"        <Peer address={quoteattr(peer)}/>" for peer in peers),
            "      </Peers>",
            "    </Discovery>",
        ]
    lines += ["  </Domain>", "</CycloneDDS>"]
    return "\n".join(lines)


def open_participant(
    domain_id: int, interface: str, *, robot: bool = False, multicast: bool = True, peers: tuple[str, ...] = ()
) -> DomainParticipant:
    """A DomainParticipant on `interface` in `domain_id`. Domain 0, the robot's, needs `robot=True`."""
    if isinstance(domain_id, bool) or not isinstance(domain_id, int) or not 0 <= domain_id <= MAX_DOMAIN:
        raise ValueError(f"domain_id must be an int in 0..{MAX_DOMAIN}, got {domain_id!r}")
    if domain_id == ROBOT_DOMAIN and not robot:
        raise ValueError(
            f"domain {ROBOT_DOMAIN} is the G1's own: pass robot=True to join it (only to talk to a real robot); "
            f"tests and simulators use loopback() or another domain"
        )
    known = interfaces()
    if interface not in known:
        raise ValueError(f"network interface {interface!r} is not on this machine; it has: {', '.join(known)}")
    if not multicast and not peers:
        raise ValueError(f"without multicast, discovery needs peers (e.g. the robot's address); none given for {interface!r}")
    xml = config_xml(domain_id, interface, multicast=multicast, peers=tuple(peers))
    with _domains_lock:
        if domain_id in _domains:
            if _domains[domain_id][0] != xml:
                raise RuntimeError(
                    f"domain {domain_id} is already open in this process with another configuration:\n"
                    f"{_domains[domain_id][0]}\none process binds a domain once"
                )
        else:
            _domains[domain_id] = (xml, Domain(domain_id, xml))  # kept for the process: deleting it ends its participants
        return DomainParticipant(domain_id)


def loopback(domain: int | None = None) -> DomainParticipant:
    """A participant on `lo` with multicast off, in `domain` or a random one of LOOPBACK_DOMAINS (never 0).

    Two participants meet by sharing the domain: `b = loopback(a.get_domain_id())`, in this process or another.
    """
    if domain is None:
        domain = random.choice(LOOPBACK_DOMAINS)
    return open_participant(domain, "lo", multicast=False, peers=("127.0.0.1",))


def topic(participant: DomainParticipant, name: str) -> Topic:
    """The G1 topic `name` with the type it carries (idl.TOPIC_TYPES)."""
    if name not in TOPIC_TYPES:
        raise ValueError(f"unknown G1 topic {name!r}; known: {', '.join(TOPIC_TYPES)}")
    return Topic(participant, name, TOPIC_TYPES[name])


def writer(participant: DomainParticipant, name: str) -> DataWriter:
    """A writer on the G1 topic `name`, with Cyclone's default QoS as Unitree's SDKs use."""
    return DataWriter(participant, topic(participant, name))


def reader(participant: DomainParticipant, name: str) -> DataReader:
    """A reader on the G1 topic `name`, with Cyclone's default QoS as Unitree's SDKs use."""
    return DataReader(participant, topic(participant, name))
