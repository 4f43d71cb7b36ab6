#!/bin/sh
# docker-compose.yml's "init" service: runs before the server on every `up`, creates
# what is missing in the volumes and never replaces what is there.
#
#   /data/server  (server volume)  certs/ (CA + server certificate and keys), tokens.json
#   /data/client  (client volume)  ca.pem, and NAME.token for each of $SECURECHAT_USERS
#
# Keys, tokens.json and token files are mode 0600, owned by the image's user.
set -eu
umask 077

server=/data/server
client=/data/client
tokens="$server/tokens.json"
users=${SECURECHAT_USERS:-alice bob carol}

# --if-missing: creates certificates on the first run, renews an expiring server
# certificate with the same CA, and leaves valid ones (or your own) alone.
# SECURECHAT_CERT_NAMES: more host names/addresses for the server certificate.
set --
for name in ${SECURECHAT_CERT_NAMES:-}; do
    set -- "$@" --name "$name"
done
securechat-certs --out "$server/certs" --if-missing "$@"

# The CA certificate is public; clients need it to verify the server.
cp "$server/certs/ca.pem" "$client/.ca.pem.tmp"
chmod 0644 "$client/.ca.pem.tmp"
mv "$client/.ca.pem.tmp" "$client/ca.pem"

for user in $users; do
    file="$client/$user.token"
    if [ -s "$file" ] && [ -f "$tokens" ]; then
        # Keep the token only if the tokens file still knows its id (tokens look like
        # sct1.<id>.<secret>); a server volume made anew invalidates old token files.
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
    securechat-token add "$user" --tokens "$tokens" --quiet >"$file.tmp"
    mv "$file.tmp" "$file"
    echo "securechat-init: token for $user written to $file"
done
echo "securechat-init: ready ($(securechat-token list --tokens "$tokens" | wc -l) tokens)"
