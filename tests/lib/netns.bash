# Two "hosts" on one machine: two network namespaces joined by a veth pair.
# Load after lib/common.
#
# netns_pair: creates namespaces NS_SRC and NS_DST (loopback up in each)
# and a veth pair VETH_SRC (in NS_SRC, address SRC_IP) - VETH_DST (in
# NS_DST, address DST_IP), on a /30 that exists only between them. Both
# namespaces (and with them the veth pair) are removed at teardown.
# in_ns NS CMD...: CMD in that namespace's network only (nsenter --net:
# unlike `ip netns exec` it keeps this mount namespace, so FUSE mounts and
# /sys stay those of the host, as swap devices are).
# ns_rx_bytes NS DEV: bytes received on DEV in NS.

netns_pair() {
    local tag=$$x$BATS_TEST_NUMBER
    NS_SRC=scs$tag NS_DST=scd$tag VETH_SRC=vs$tag VETH_DST=vd$tag
    SRC_IP=10.213.17.1 DST_IP=10.213.17.2
    command -v ip >/dev/null || { echo "ip is missing: apt-get install iproute2" >&2; return 1; }
    ip netns add "$NS_SRC" || return 1
    defer ip netns delete "$NS_SRC"
    ip netns add "$NS_DST" || return 1
    defer ip netns delete "$NS_DST"
    ip link add "$VETH_SRC" netns "$NS_SRC" type veth peer name "$VETH_DST" netns "$NS_DST" ||
        return 1
    ip -n "$NS_SRC" addr add "$SRC_IP/30" dev "$VETH_SRC" &&
        ip -n "$NS_DST" addr add "$DST_IP/30" dev "$VETH_DST" &&
        ip -n "$NS_SRC" link set lo up && ip -n "$NS_DST" link set lo up &&
        ip -n "$NS_SRC" link set "$VETH_SRC" up && ip -n "$NS_DST" link set "$VETH_DST" up ||
        return 1
    wait_for _veth_up "$NS_SRC" "$VETH_SRC" && wait_for _veth_up "$NS_DST" "$VETH_DST"
}

_veth_up() {
    ip -n "$1" link show "$2" | grep -q LOWER_UP
}

in_ns() {
    local ns=$1
    shift
    nsenter "--net=/run/netns/$ns" "$@"
}

ns_rx_bytes() {
    # /proc/net is the reader's namespace's (/sys/class/net would be the
    # host's: sysfs is not remounted by nsenter).
    in_ns "$1" awk -v d="$2:" '$1 == d { print $2 }' /proc/net/dev
}
