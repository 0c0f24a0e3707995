#!/bin/sh
# Certificates for the `secure` profile of docker-compose.yml. From the repository root:
#
#   sh ops/compose/make-certs.sh          # makes ./certs (or: make-certs.sh FOLDER)
#
# A private certificate authority (ca.pem, ca.key) signs the Kafka broker's certificate for
# kafka-secure (its name in the compose network), localhost and 127.0.0.1. kafka.pem holds
# the broker's unencrypted PKCS#8 key and that certificate: Kafka's PEM key store. ca.pem is
# what clients trust (LLMPULSE_KAFKA_SSL_CA_FILE). The folder is 0700 and the keys 0600;
# existing files are kept, so clients keep trusting the same CA.
#
# Kafka runs as uid 1000 in its container: on a Linux host where your uid is another one,
# give it the key with `sudo chown 1000 certs/kafka.pem` (Docker Desktop needs nothing).
set -eu

dir=${1:-certs}
days=825
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"

if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=llmpulse compose CA" \
    -keyout ca.key -out ca.pem
fi
if [ ! -f kafka.pem ]; then
  printf 'subjectAltName=DNS:kafka-secure,DNS:localhost,IP:127.0.0.1\n' > kafka.ext
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kafka-secure" -keyout kafka.key -out kafka.csr
  openssl x509 -req -in kafka.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile kafka.ext -out kafka.crt
  cat kafka.key kafka.crt > kafka.pem
  rm -f kafka.key kafka.csr kafka.ext kafka.crt
fi
chmod 600 ca.key kafka.pem
chmod 644 ca.pem  # public: the workers' containers (uid 10001) read it
echo "certificates in $dir: ca.pem (trusted by clients), kafka.pem (the broker's key and certificate)"
if [ "$(id -u)" != 1000 ]; then
  echo "Kafka runs as uid 1000 in its container: on Linux, sudo chown 1000 $dir/kafka.pem"
fi
