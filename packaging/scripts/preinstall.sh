#!/bin/sh
# Create the medrelay system user and groups before files owned by them land.
set -e
if ! getent group medrelay >/dev/null; then
  groupadd --system medrelay
fi
if ! getent group medrelay-admin >/dev/null; then
  groupadd --system medrelay-admin
fi
if ! getent passwd medrelay >/dev/null; then
  useradd --system --gid medrelay --home-dir /var/lib/medrelay --no-create-home \
    --shell /usr/sbin/nologin --comment "medrelay agent" medrelay
fi
exit 0
