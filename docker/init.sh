#!/bin/sh
# Creates what is missing — development certificates, tokens, per-user token files —
# and never replaces what is there. Two callers, one logic:
#   - docker-compose.yml's "init" service, before the server, on every `up`;
#   - `make run`, with the directories below pointed at certs/ and run/.
#
#   SECURECHAT_CERTS_DIR   CA + server certificate and keys   (default /data/server/certs)
#   SECURECHAT_TOKENS      the server's tokens file           (default /data/server/tokens.json)
#   SECURECHAT_CLIENT_DIR  ca.pem and USER.token per user     (default /data/client)
#   SECURECHAT_USERS       who gets a token                   (default "alice bob carol")
#                          each NAME (the server's default room only), NAME:PATTERNS
#                          (read and send in those rooms, e.g. alice:general,ops) or
#                          NAME:PATTERNS:ro (read only); a kept token keeps its grants
#                          (change them with securechat-token grant/ungrant)
#   SECURECHAT_CERT_NAMES  more names/addresses for the server certificate
#
# Keys, the tokens file and token files are mode 0600 (umask 077 below).
set -eu
umask 077

certs=${SECURECHAT_CERTS_DIR:-/data/server/certs}
tokens=${SECURECHAT_TOKENS:-/data/server/tokens.json}
client=${SECURECHAT_CLIENT_DIR:-/data/client}
users=${SECURECHAT_USERS:-alice bob carol}
mkdir -p "$client"

# --if-missing: creates certificates on the first run, renews an expiring server
# certificate with the same CA, and leaves valid ones (or your own) alone.
set --
for name in ${SECURECHAT_CERT_NAMES:-}; do
    set -- "$@" --name "$name"
done
securechat-certs --out "$certs" --if-missing "$@"

# The CA certificate is public; clients need it to verify the server. (Absent when
# the server uses a certificate from elsewhere: clients then use the system store.)
if [ -f "$certs/ca.pem" ] && [ "$certs" != "$client" ]; then
    cp "$certs/ca.pem" "$client/.ca.pem.tmp"
    chmod 0644 "$client/.ca.pem.tmp"
    mv "$client/.ca.pem.tmp" "$client/ca.pem"
fi

set -f  # room patterns may hold '*': never expand them as file names
for entry in $users; do
    user=${entry%%:*}
    rest=${entry#"$user"}
    rest=${rest#:}
    rooms=${rest%%:*}
    mode=${rest#"$rooms"}
    mode=${mode#:}
    set --
    if [ -n "$rooms" ]; then
        set -- --rooms "$rooms"
    fi
    if [ "$mode" = ro ]; then
        set -- "$@" --read-only
    elif [ -n "$mode" ]; then
        echo "securechat-init: $entry: the mode after the rooms must be ro" >&2
        exit 2
    fi
    file="$client/$user.token"
    if [ -s "$file" ] && [ -f "$tokens" ]; then
        # Keep the token only if the tokens file still knows its id (tokens look like
        # sct1.<id>.<secret>); a tokens file made anew invalidates old token files.
        id=$(cut -d. -f2 "$file")
        if securechat-token list --tokens "$tokens" 2>/dev/null \
                | awk -v u="$user" -v i="$id" '$1 == u && $2 == i {f = 1} END {exit !f}'; then
            continue
        fi
    fi
    # A lost or stale token file: revoke what the user had, issue a new token.
    if [ -f "$tokens" ]; then
        securechat-token revoke "$user" --tokens "$tokens" >/dev/null 2>&1 || true
    fi
    securechat-token add "$user" --tokens "$tokens" --quiet "$@" >"$file.tmp"
    mv "$file.tmp" "$file"
    echo "securechat-init: token for $user written to $file"
done
echo "securechat-init: ready ($(securechat-token list --tokens "$tokens" | wc -l) tokens)"
