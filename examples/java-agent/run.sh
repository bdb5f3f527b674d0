#!/bin/sh
# Run a Java agent through egressguard: `run.sh [Agent.java | PassThrough.java URL]`.
# Defaults fit `make run`, from the repository's top; else set EGRESSGUARD_HOST,
# EGRESSGUARD_PORT, EGRESSGUARD_CA and EGRESSGUARD_TRUSTSTORE.
set -eu
CA=${EGRESSGUARD_CA:-certs/egressguard-ca.pem}
STORE=${EGRESSGUARD_TRUSTSTORE:-var/egressguard-truststore.p12}
if [ ! -f "$STORE" ]; then
  # The agent's own truststore: the JDK's roots (for pass-through hosts, which
  # egressguard does not intercept) plus egressguard's CA (for vendor hosts).
  JAVA_HOME=${JAVA_HOME:-$(java -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java.home = //p')}
  rm -f "$STORE.new"
  keytool -importkeystore -noprompt -srckeystore "$JAVA_HOME/lib/security/cacerts" \
    -srcstorepass changeit -destkeystore "$STORE.new" -deststoretype PKCS12 \
    -deststorepass changeit 2>/dev/null
  keytool -importcert -noprompt -alias egressguard -file "$CA" \
    -keystore "$STORE.new" -storepass changeit
  mv "$STORE.new" "$STORE"
fi
PROGRAM=$(dirname "$0")/${1:-Agent.java}
[ $# -gt 0 ] && shift
# -Djdk.http.auth.tunneling.disabledSchemes= lets the JDK answer a proxy's Basic
# challenge on a CONNECT (only pass-through hosts ask; vendor calls carry the token)
exec java -Dhttps.proxyHost="${EGRESSGUARD_HOST:-127.0.0.1}" \
  -Dhttps.proxyPort="${EGRESSGUARD_PORT:-8080}" \
  -Djavax.net.ssl.trustStore="$STORE" -Djavax.net.ssl.trustStorePassword=changeit \
  -Djdk.http.auth.tunneling.disabledSchemes= \
  "$PROGRAM" "$@"
