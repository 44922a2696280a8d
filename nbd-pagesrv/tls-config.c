#include "tls-config.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *tls_mode_name(TlsMode mode)
{
    return mode == TLS_REQUIRE ? "require" : mode == TLS_ON ? "on" : "off";
}

static bool readable(const char *path, const char *what, GError **error)
{
    if (access(path, R_OK) == 0)
        return true;
    int err = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err), "%s %s: %s", what, path,
                g_strerror(err));
    return false;
}

/* The first identity of a psktool key file: a client must name one that
 * the server's file holds, and both ends are normally given the same. */
static char *first_psk_identity(const char *path, GError **error)
{
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, error))
        return NULL;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        char *colon = strchr(line, ':');
        if (colon && colon > line) {
            *colon = 0;
            return g_strdup(line);
        }
    }
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                "--tls-psk %s holds no IDENTITY:HEXKEY line; make one with "
                "'psktool -u alice -p %s'", path, path);
    return NULL;
}

/* A key readable by others gives away the guest's RAM. */
static void warn_if_exposed(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)))
        g_warning("--tls-psk %s can be read by users other than its owner (mode %04o): anyone "
                  "who reads it can read the guest's memory; chmod 0600 it", path,
                  (unsigned)(st.st_mode & 07777));
}

bool tls_config_init(TlsConfig *cfg, const char *mode_arg, const char *psk_file,
                     const char *cert_dir, const char *username, bool server, bool client,
                     GError **error)
{
    memset(cfg, 0, sizeof *cfg);
    bool creds = psk_file || cert_dir;
    if (!mode_arg)
        cfg->mode = creds ? TLS_REQUIRE : TLS_OFF;
    else if (strcmp(mode_arg, "require") == 0)
        cfg->mode = TLS_REQUIRE;
    else if (strcmp(mode_arg, "on") == 0)
        cfg->mode = TLS_ON;
    else if (strcmp(mode_arg, "off") == 0)
        cfg->mode = TLS_OFF;
    else {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--tls '%s': give require, on or off", mode_arg);
        return false;
    }
    if (psk_file && cert_dir) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--tls-psk and --tls-certificates are two ways of authenticating: give one");
        return false;
    }
    if (cfg->mode != TLS_OFF && !creds) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--tls %s needs a key (--tls-psk FILE, made with psktool) or certificates "
                    "(--tls-certificates DIR)", tls_mode_name(cfg->mode));
        return false;
    }
    if (cfg->mode == TLS_OFF && creds) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--tls off contradicts --tls-psk/--tls-certificates: leave one out");
        return false;
    }
    if (username && !psk_file) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "--tls-username names the PSK identity: it goes with --tls-psk");
        return false;
    }
    if (cfg->mode == TLS_OFF)
        return true;
    if (psk_file) {
        if (!readable(psk_file, "--tls-psk", error))
            return false;
        warn_if_exposed(psk_file);
        cfg->psk_file = g_strdup(psk_file);
        if (client) {
            cfg->username = username ? g_strdup(username) : first_psk_identity(psk_file, error);
            if (!cfg->username)
                return false;
        }
        return true;
    }
    /* nbdkit's and libnbd's layout: the CA, then this end's certificate
     * and key. A source verifies its clients against the same CA. */
    static const char *const server_files[] = { "ca-cert.pem", "server-cert.pem", "server-key.pem" };
    static const char *const client_files[] = { "ca-cert.pem", "client-cert.pem", "client-key.pem" };
    for (int role = 0; role < 2; role++) {
        if (!(role == 0 ? server : client))
            continue;
        const char *const *files = role == 0 ? server_files : client_files;
        for (int i = 0; i < 3; i++) {
            g_autofree char *path = g_build_filename(cert_dir, files[i], NULL);
            if (!readable(path, role == 0 ? "--tls-certificates (server side):"
                                          : "--tls-certificates (client side):", error))
                return false;
        }
    }
    cfg->cert_dir = g_strdup(cert_dir);
    return true;
}

void tls_config_clear(TlsConfig *cfg)
{
    g_free(cfg->psk_file);
    g_free(cfg->cert_dir);
    g_free(cfg->username);
    memset(cfg, 0, sizeof *cfg);
}

bool tls_config_apply_libnbd(const TlsConfig *cfg, struct nbd_handle *h, GError **error)
{
    int mode = !tls_config_enabled(cfg) ? LIBNBD_TLS_DISABLE
               : cfg->mode == TLS_REQUIRE ? LIBNBD_TLS_REQUIRE : LIBNBD_TLS_ALLOW;
    bool ok = nbd_set_tls(h, mode) == 0;
    if (ok && tls_config_enabled(cfg)) {
        if (cfg->psk_file)
            ok = nbd_set_tls_psk_file(h, cfg->psk_file) == 0 &&
                 nbd_set_tls_username(h, cfg->username) == 0;
        else
            /* libnbd checks the source's certificate against the CA and
             * the host name it connects to. */
            ok = nbd_set_tls_certificates(h, cfg->cert_dir) == 0 &&
                 nbd_set_tls_verify_peer(h, true) == 0;
    }
    if (!ok)
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "TLS settings: %s",
                    nbd_get_error());
    return ok;
}
