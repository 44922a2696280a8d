/* The control socket: a Unix socket speaking one request per line
 * ("COMMAND ARG..."), one JSON object per line in answer ({"error":"..."}
 * on failure). docs/control-protocol.md lists the commands. */
#ifndef SWAPCOPY_CONTROL_H
#define SWAPCOPY_CONTROL_H

#include <glib.h>
#include <stdbool.h>

typedef struct ControlServer ControlServer;
typedef struct ControlClient ControlClient;

/* Handles argv[0..argc). Either answers now with control_reply(), or keeps
 * the client (control_client_ref) and answers later from the main loop. */
typedef void (*ControlHandler)(ControlClient *client, int argc, char **argv, gpointer data);

ControlServer *control_server_new(const char *path, GError **error);
void control_server_free(ControlServer *cs);
void control_register(ControlServer *cs, const char *command, const char *usage,
                      ControlHandler fn, gpointer data);

/* json: one object, no newline. */
void control_reply(ControlClient *client, const char *json);
void control_reply_error(ControlClient *client, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
ControlClient *control_client_ref(ControlClient *client);
void control_client_unref(ControlClient *client);

/* A client on fd (a connected, non-blocking socket), as accept makes
 * one; then fed what it sends, one call per read: complete lines are
 * answered. False once the client was closed (a line over 4 KiB). For the
 * accept path and for tests/fuzz. detach closes it. */
ControlClient *control_client_attach(ControlServer *cs, int fd);
bool control_client_feed(ControlClient *client, const char *data, size_t len);
void control_client_detach(ControlClient *client);

/* Append s to out as a JSON string literal. */
void json_append_string(GString *out, const char *s);

#endif
