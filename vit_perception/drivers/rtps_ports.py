"""Which UDP ports a DDS domain uses, and which domains this host is using now.

RTPS well-known ports (DDSI-RTPS 2.x, 9.6.1.1; Cyclone's and Fast DDS's defaults): domain D binds
UDP 7400 + 250*D (+0 discovery, +1 user-data multicast; +10/+11 the first participant's unicast
pair, +2 per further participant), all within its block of 250 ports. From D = 102 on they fall
inside Linux's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default), where any
other socket may already hold them: creating the domain then fails with "failed to bind ...
address in use" (it did, in CI here, on domains 149 and 203). The ROS 2 docs advise 0..101 on
Linux for this reason. No DDS library is imported here.
"""

from __future__ import annotations

PORT_BASE, DOMAIN_PORT_GAIN, FIXED_PORTS = 7400, 250, 12
EPHEMERAL_PORTS_PATH = '/proc/sys/net/ipv4/ip_local_port_range'
UDP_SOCKET_TABLES = ('/proc/net/udp', '/proc/net/udp6')


def domain_ports(domain_id: int) -> range:
    """The UDP ports DDS domain `domain_id` binds at fixed numbers (RTPS port mapping)."""
    first = PORT_BASE + DOMAIN_PORT_GAIN * domain_id
    return range(first, first + FIXED_PORTS)


def ephemeral_port_range() -> range | None:
    """The kernel's ephemeral port range (inclusive bounds, as a range); None if unknown."""
    try:
        with open(EPHEMERAL_PORTS_PATH) as f:
            low, high = (int(v) for v in f.read().split()[:2])
    except (OSError, ValueError):
        return None
    return range(low, high + 1)


def ephemeral_clash(domain_id: int, ephemeral: range | None) -> str:
    """'' when the domain's ports are outside `ephemeral`, else one line saying what to do."""
    ports = domain_ports(domain_id)
    if ephemeral is None or ports.stop <= ephemeral.start or ports.start >= ephemeral.stop:
        return ''
    return (f'DDS domain {domain_id} uses UDP ports {ports.start}-{ports.stop - 1}, inside the '
            f"kernel's ephemeral range {ephemeral.start}-{ephemeral.stop - 1} "
            '(net.ipv4.ip_local_port_range), where another socket can hold them; use a domain id '
            'in 0..101 (ROS_DOMAIN_ID)')


def bound_udp_ports(tables=UDP_SOCKET_TABLES) -> set[int]:
    """Local ports of every UDP socket on this host's network namespace, any process or user
    (Linux /proc/net/udp*; empty where those tables do not exist)."""
    ports = set()
    for table in tables:
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:  # "sl local_address rem_address st ...", local "0100007F:1CE8"
            fields = row.split()
            if len(fields) > 1 and ':' in fields[1]:
                ports.add(int(fields[1].rsplit(':', 1)[1], 16))
    return ports


def domains_in_use(ports: set[int]) -> set[int]:
    """Domain ids with a bound port in their block of DOMAIN_PORT_GAIN ports: some participant
    (any vendor, multicast or unicast discovery) runs on them, or another socket sits there."""
    return {(port - PORT_BASE) // DOMAIN_PORT_GAIN for port in ports if port >= PORT_BASE}
