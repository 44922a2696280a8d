#include "tls.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <poll.h>

/* PSK key exchanges are not in GnuTLS's NORMAL set: add them (with
 * forward secrecy first). Certificates need nothing beyond NORMAL. */
#define PRIORITY_PSK "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"
#define PRIORITY_X509 "NORMAL"

#define BYE_TIMEOUT_US (G_USEC_PER_SEC / 2)

struct TlsServer {
    gnutls_psk_server_credentials_t psk;
    gnutls_certificate_credentials_t x509;
    gnutls_priority_t priority;
};

static bool gnutls_failed(int rc, const char *what, const char *file, GError **error)
{
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "TLS: %s%s%s: %s", what,
                file ? " " : "", file ? file : "", gnutls_strerror(rc));
    return false;
}

TlsServer *tls_server_new(const TlsConfig *cfg, GError **error)
{
    TlsServer *ts = g_new0(TlsServer, 1);
    int rc;
    if (cfg->psk_file) {
        if ((rc = gnutls_psk_allocate_server_credentials(&ts->psk)) < 0 ||
            (rc = gnutls_psk_set_server_credentials_file(ts->psk, cfg->psk_file)) < 0) {
            gnutls_failed(rc, "cannot load the PSK key file", cfg->psk_file, error);
            goto fail;
        }
    } else {
        g_autofree char *ca = g_build_filename(cfg->cert_dir, "ca-cert.pem", NULL);
        g_autofree char *crl = g_build_filename(cfg->cert_dir, "ca-crl.pem", NULL);
        g_autofree char *cert = g_build_filename(cfg->cert_dir, "server-cert.pem", NULL);
        g_autofree char *key = g_build_filename(cfg->cert_dir, "server-key.pem", NULL);
        if ((rc = gnutls_certificate_allocate_credentials(&ts->x509)) < 0) {
            gnutls_failed(rc, "cannot allocate certificate credentials", NULL, error);
            goto fail;
        }
        /* The CA that signed the clients' certificates (and ours). */
        if ((rc = gnutls_certificate_set_x509_trust_file(ts->x509, ca, GNUTLS_X509_FMT_PEM)) <= 0) {
            gnutls_failed(rc ? rc : GNUTLS_E_NO_CERTIFICATE_FOUND, "no CA certificate in", ca, error);
            goto fail;
        }
        if (g_file_test(crl, G_FILE_TEST_EXISTS) &&
            (rc = gnutls_certificate_set_x509_crl_file(ts->x509, crl, GNUTLS_X509_FMT_PEM)) < 0) {
            gnutls_failed(rc, "cannot load the revocation list", crl, error);
            goto fail;
        }
        if ((rc = gnutls_certificate_set_x509_key_file(ts->x509, cert, key, GNUTLS_X509_FMT_PEM)) < 0) {
            g_autofree char *both = g_strdup_printf("%s and %s", cert, key);
            gnutls_failed(rc, "cannot load the server's certificate and key", both, error);
            goto fail;
        }
    }
    const char *err_pos = NULL;
    if ((rc = gnutls_priority_init(&ts->priority, ts->psk ? PRIORITY_PSK : PRIORITY_X509,
                                   &err_pos)) < 0) {
        gnutls_failed(rc, "priority string", err_pos, error);
        goto fail;
    }
    return ts;
fail:
    tls_server_free(ts);
    return NULL;
}

void tls_server_free(TlsServer *ts)
{
    if (!ts)
        return;
    if (ts->psk)
        gnutls_psk_free_server_credentials(ts->psk);
    if (ts->x509)
        gnutls_certificate_free_credentials(ts->x509);
    if (ts->priority)
        gnutls_priority_deinit(ts->priority);
    g_free(ts);
}

/* ---- GnuTLS's transport: the wire's socket, with its deadlines ---------- */

static ssize_t pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
    Wire *w = ptr;
    ssize_t n = wire_raw_recv(w, buf, len);
    if (n < 0)
        gnutls_transport_set_errno(w->layer_data, errno);
    return n;
}

/* Wait up to ms for something to read (GnuTLS asks under TLS 1.3). */
static int pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
    Wire *w = ptr;
    if (w->carry_off < w->carry_len)
        return 1;
    struct pollfd pfd = { .fd = w->fd, .events = POLLIN };
    int n = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)MIN(ms, (unsigned)G_MAXINT));
    if (n < 0)
        gnutls_transport_set_errno(w->layer_data, errno);
    return n < 0 ? -1 : n > 0;
}

static ssize_t push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int iovcnt)
{
    Wire *w = ptr;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    /* giovec_t is struct iovec's layout (GnuTLS documents it so). */
    if (wire_raw_sendv(w, (const struct iovec *)iov, iovcnt) < 0) {
        gnutls_transport_set_errno(w->layer_data, errno);
        return -1;
    }
    return (ssize_t)total;
}

/* ---- the Wire layer: plaintext in and out ------------------------------ */

static ssize_t layer_recv(Wire *w, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = gnutls_record_recv(w->layer_data, buf, len);
        if (n >= 0)
            return n;
        if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN)
            continue;
        if (n == GNUTLS_E_PREMATURE_TERMINATION)
            return 0;   /* the peer closed without saying goodbye: still an end */
        /* A pull error keeps the socket's errno (ETIMEDOUT past a
         * deadline); anything else is a broken session. */
        int err = n == GNUTLS_E_PULL_ERROR && errno ? errno : ECONNRESET;
        g_debug("TLS receive failed: %s", gnutls_strerror((int)n));
        errno = err;
        return -1;
    }
}

static int layer_sendv(Wire *w, const struct iovec *iov, int iovcnt)
{
    /* One reply's pieces go into as few records as they fit. */
    gnutls_record_cork(w->layer_data);
    for (int i = 0; i < iovcnt; i++) {
        const char *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left > 0) {
            ssize_t n = gnutls_record_send(w->layer_data, p, left);
            if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN)
                continue;
            if (n < 0) {
                g_debug("TLS send failed: %s", gnutls_strerror((int)n));
                errno = EPIPE;
                return -1;
            }
            p += n;
            left -= (size_t)n;
        }
    }
    for (;;) {
        int rc = gnutls_record_uncork(w->layer_data, GNUTLS_RECORD_WAIT);
        if (rc >= 0)
            return 0;
        if (rc != GNUTLS_E_INTERRUPTED && rc != GNUTLS_E_AGAIN) {
            g_debug("TLS send failed: %s", gnutls_strerror(rc));
            errno = EPIPE;
            return -1;
        }
    }
}

static const WireLayer tls_layer = { .recv = layer_recv, .sendv = layer_sendv };

bool tls_server_start(TlsServer *ts, Wire *w, GError **error)
{
    gnutls_session_t s;
    int rc = gnutls_init(&s, GNUTLS_SERVER);
    if (rc < 0)
        return gnutls_failed(rc, "cannot start a session", NULL, error);
    if ((rc = gnutls_priority_set(s, ts->priority)) < 0 ||
        (rc = gnutls_credentials_set(s, ts->psk ? GNUTLS_CRD_PSK : GNUTLS_CRD_CERTIFICATE,
                                     ts->psk ? (void *)ts->psk : (void *)ts->x509)) < 0) {
        gnutls_deinit(s);
        return gnutls_failed(rc, "cannot set up the session", NULL, error);
    }
    if (ts->x509) {
        /* Only a client with a certificate from our CA may read guest
         * memory: ask for one, and let GnuTLS verify it in the handshake. */
        gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
        gnutls_session_set_verify_cert(s, NULL, 0);
    }
    /* Bytes the client sent right behind STARTTLS are the ClientHello. */
    wire_set_layer(w, &tls_layer, s);
    gnutls_transport_set_ptr(s, w);
    gnutls_transport_set_pull_function(s, pull);
    gnutls_transport_set_pull_timeout_function(s, pull_timeout);
    gnutls_transport_set_vec_push_function(s, push);
    do {
        rc = gnutls_handshake(s);
    } while (rc < 0 && !gnutls_error_is_fatal(rc));
    if (rc < 0) {
        bool late = w->deadline_us && g_get_monotonic_time() >= w->deadline_us;
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "TLS handshake failed: %s%s",
                    gnutls_strerror(rc), late ? " (the handshake deadline passed)"
                    : rc == GNUTLS_E_DECRYPTION_FAILED || rc == GNUTLS_E_KEYFILE_ERROR
                        ? " (does the client have the same key?)" : "");
        gnutls_deinit(s);
        w->layer = NULL;
        w->layer_data = NULL;
        return false;
    }
    return true;
}

void tls_session_end(Wire *w)
{
    if (w->layer != &tls_layer)
        return;
    gnutls_session_t s = w->layer_data;
    /* A goodbye the peer may never read must not hold us. */
    int64_t saved = w->deadline_us;
    w->deadline_us = g_get_monotonic_time() + BYE_TIMEOUT_US;
    gnutls_bye(s, GNUTLS_SHUT_WR);
    w->deadline_us = saved;
    gnutls_deinit(s);
    w->layer = NULL;
    w->layer_data = NULL;
}

char *tls_session_describe(Wire *w)
{
    if (w->layer != &tls_layer)
        return g_strdup("plaintext");
    gnutls_session_t s = w->layer_data;
    const char *version = gnutls_protocol_get_name(gnutls_protocol_get_version(s));
    if (gnutls_auth_get_type(s) == GNUTLS_CRD_PSK) {
        const char *id = gnutls_psk_server_get_username(s);
        return g_strdup_printf("%s, PSK identity '%s'", version ? version : "TLS",
                               id ? id : "?");
    }
    return g_strdup_printf("%s, client certificate verified", version ? version : "TLS");
}
