#!/bin/bash
# Entry point of the `secure` profile's Kafka (docker-compose.yml, service kafka-secure).
#
# On the first start it formats the storage with the SCRAM credential of the llmpulse
# user: the KRaft way, `kafka-storage.sh format --add-scram`, so the credential is in the
# cluster metadata before the broker serves anyone. Then it runs the broker with
# kafka-secure.properties. The user name and password come from KAFKA_SASL_USERNAME and
# KAFKA_SASL_PASSWORD in .env (changing them later needs `docker compose down -v` or
# kafka-configs.sh --alter --add-config over the loopback listener).
set -euo pipefail

config=/etc/llmpulse/server.properties
keystore=/etc/llmpulse/certs/kafka.pem
data=/var/lib/kafka/data

: "${SCRAM_USERNAME:?KAFKA_SASL_USERNAME is not set: copy .env.example to .env and fill it in}"
: "${SCRAM_PASSWORD:?KAFKA_SASL_PASSWORD is not set: copy .env.example to .env and fill it in}"
# The --add-scram syntax takes no quoting: letters, digits and . _ ~ - only
# (`openssl rand -hex 32` makes such a password).
if [[ ! $SCRAM_USERNAME =~ ^[A-Za-z0-9._~-]+$ || ! $SCRAM_PASSWORD =~ ^[A-Za-z0-9._~-]+$ ]]; then
  echo "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: use letters, digits and . _ ~ - only" >&2
  exit 2
fi
if [[ ! -r $keystore ]]; then
  echo "cannot read $keystore: run \`sh ops/compose/make-certs.sh\` (see its header)" >&2
  exit 2
fi

if [[ ! -f $data/meta.properties ]]; then
  /opt/kafka/bin/kafka-storage.sh format --config "$config" \
    --cluster-id "$(/opt/kafka/bin/kafka-storage.sh random-uuid)" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USERNAME,password=$SCRAM_PASSWORD]"
fi
unset SCRAM_PASSWORD
exec /opt/kafka/bin/kafka-server-start.sh "$config"
