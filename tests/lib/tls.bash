# Keys and certificates for the TLS tests, made fresh for each test with
# GnuTLS's psktool and certtool (gnutls-bin). Load after lib/common.

# make_psk FILE [IDENTITY]: a pre-shared key file, mode 0600.
make_psk() {
    rm -f "$1"
    psktool -u "${2:-alice}" -p "$1" >/dev/null || { echo "psktool failed to write $1" >&2; return 1; }
    chmod 0600 "$1"
}

# make_ca DIR NAME: a CA key and certificate in DIR (ca-key.pem, ca-cert.pem).
make_ca() {
    mkdir -p "$1"
    printf 'cn = %s\nca\ncert_signing_key\nexpiration_days = 2\n' "$2" >"$1/ca.info"
    certtool --generate-privkey --key-type=ecdsa --outfile "$1/ca-key.pem" 2>/dev/null &&
        certtool --generate-self-signed --load-privkey "$1/ca-key.pem" --template "$1/ca.info" \
            --outfile "$1/ca-cert.pem" 2>/dev/null ||
        { echo "certtool could not make the CA in $1" >&2; return 1; }
}

# make_cert CA_DIR OUT_DIR server|client: OUT_DIR gets ca-cert.pem and
# ROLE-cert.pem / ROLE-key.pem signed by the CA, the layout nbdkit,
# libnbd and nbd-pagesrv read. A server's is for 127.0.0.1 and localhost.
make_cert() {
    local ca=$1 out=$2 role=$3
    mkdir -p "$out"
    chmod 0700 "$out"
    cp "$ca/ca-cert.pem" "$out/ca-cert.pem"
    if [ "$role" = server ]; then
        printf 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n'
    else
        printf 'cn = swapcopy-destination\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n'
    fi >"$out/$role.info"
    certtool --generate-privkey --key-type=ecdsa --outfile "$out/$role-key.pem" 2>/dev/null &&
        certtool --generate-certificate --load-ca-certificate "$ca/ca-cert.pem" \
            --load-ca-privkey "$ca/ca-key.pem" --load-privkey "$out/$role-key.pem" \
            --template "$out/$role.info" --outfile "$out/$role-cert.pem" 2>/dev/null ||
        { echo "certtool could not make the $role certificate in $out" >&2; return 1; }
    chmod 0600 "$out/$role-key.pem"
}

# tls_source_start IMG [nbd-pagesrv options]: serve IMG as export "mem" on
# a free loopback port, ready when its log says it listens (a plaintext
# probe would be refused). Sets SRC_PID SRC_PORT SRC_LOG.
tls_source_start() {
    local img=$1 try
    shift
    SRC_LOG=$BATS_TEST_TMPDIR/source.log
    for (( try=0; try<5; try++ )); do
        SRC_PORT=$(free_port)
        "$PAGESRV" --export "mem=$img" --listen "127.0.0.1:$SRC_PORT" --no-mlock -v "$@" \
            >"$SRC_LOG" 2>&1 &
        SRC_PID=$!
        if wait_for grep -q "serving NBD on TCP" "$SRC_LOG"; then
            defer kill_wait "$SRC_PID"
            return 0
        fi
        kill_wait "$SRC_PID"
    done
    cat "$SRC_LOG" >&2
    return 1
}
