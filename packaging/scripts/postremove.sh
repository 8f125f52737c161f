#!/bin/sh
# The store and master key in /var/lib/medrelay are kept on removal: they hold
# patient data and credentials, and deleting them is the administrator's call.
set -e
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
