#!/bin/sh
set -e
# On removal (not upgrade) stop and disable the service.
case "$1" in
  remove|0|purge)
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now medrelayd >/dev/null 2>&1 || true
    fi
    ;;
esac
exit 0
