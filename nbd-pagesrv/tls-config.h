/* TLS settings of the link between a source and a destination, as the user
 * gives them (--tls, --tls-psk, --tls-certificates, --tls-username). The
 * source's server side uses them through tls.c (GnuTLS), the destination's
 * client side through libnbd (source-conn.c). docs/security.md. */
#ifndef SWAPCOPY_TLS_CONFIG_H
#define SWAPCOPY_TLS_CONFIG_H

#include <glib.h>
#include <libnbd.h>
#include <stdbool.h>

typedef enum {
    TLS_OFF,        /* plaintext only; STARTTLS is refused */
    TLS_ON,         /* TLS offered; plaintext clients served too */
    TLS_REQUIRE,    /* on TCP, nothing but STARTTLS before TLS is up */
} TlsMode;

typedef struct {
    TlsMode mode;
    char *psk_file;       /* psktool's format: IDENTITY:HEXKEY per line */
    char *cert_dir;       /* nbdkit's / libnbd's layout of PEM files */
    char *username;       /* client: PSK identity (default: the file's first) */
} TlsConfig;

/* From the option values (mode_arg may be NULL: "require" when a key or
 * certificates are given, else "off"). Checks that the files a role needs
 * exist and are readable, and warns about a key file others may read.
 * server: this process serves TCP clients; client: it connects to a
 * source. False with *error set, naming the file and what to do. */
bool tls_config_init(TlsConfig *cfg, const char *mode_arg, const char *psk_file,
                     const char *cert_dir, const char *username, bool server, bool client,
                     GError **error);
void tls_config_clear(TlsConfig *cfg);

static inline bool tls_config_enabled(const TlsConfig *cfg)
{
    return cfg && cfg->mode != TLS_OFF;
}

/* Apply cfg to a libnbd handle before it connects. False with *error. */
bool tls_config_apply_libnbd(const TlsConfig *cfg, struct nbd_handle *h, GError **error);

const char *tls_mode_name(TlsMode mode);

#endif
