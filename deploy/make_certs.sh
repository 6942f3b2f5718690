#!/usr/bin/env bash
# Development credentials for a secure Flower deployment (TLS + SuperNode authentication).
#
#   deploy/make_certs.sh DIR [N]       # N SuperNode key pairs (default 2)
#
# Writes into DIR, which must be new or empty (nothing is ever overwritten):
#   ca.key ca.crt                     a self-signed development CA (valid 30 days)
#   server.key server.pem             the SuperLink's certificate, signed by the CA, with
#                                     SAN DNS:localhost, IP:127.0.0.1, IP:::1
#   supernode-<i> supernode-<i>.pub   ECDSA P-384 key pairs (ssh-keygen), i = 0..N-1
#   .gitignore                        "*": nothing in DIR is ever committed
#
# For loopback testing only: the private keys are unencrypted. For other hosts, add their
# names/addresses to subjectAltName below.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 DIR [NUM_SUPERNODE_KEYS]" >&2
    exit 2
fi
dir=$1
count=${2:-2}
if ! [[ "$count" =~ ^[0-9]+$ ]]; then
    echo "error: NUM_SUPERNODE_KEYS must be a non-negative integer, got '$count'" >&2
    exit 2
fi
for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done
if [[ -e "$dir" && -n "$(ls -A "$dir")" ]]; then
    echo "error: $dir exists and is not empty; choose a new directory" >&2
    exit 1
fi

umask 077
mkdir -p "$dir"
cd "$dir"
echo "*" > .gitignore

# Certificate authority.
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -sha256 \
    -keyout ca.key -out ca.crt -subj "/CN=fedmtl development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# SuperLink server certificate.
cat > server.ext <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
EOF
openssl req -new -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
openssl verify -CAfile ca.crt server.pem >/dev/null

# SuperNode authentication keys (register each .pub with `flwr supernode register`).
for ((i = 0; i < count; i++)); do
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedmtl-supernode-$i" -f "supernode-$i"
done
chmod 644 .gitignore ca.crt server.pem
if ((count > 0)); then chmod 644 ./*.pub; fi

echo "wrote $(pwd): ca.crt server.pem server.key and $count SuperNode key pair(s)"
