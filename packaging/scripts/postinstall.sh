#!/bin/sh
# Directories with the modes the agent insists on (it refuses a state
# directory or master key that others can read).
set -e
install -d -m 0700 -o medrelay -g medrelay /var/lib/medrelay
install -d -m 0750 -o root -g medrelay /etc/medrelay
install -d -m 0755 -o root -g root /usr/lib/medrelay/plugins
if [ -f /var/lib/medrelay/master.key ]; then
  chown medrelay:medrelay /var/lib/medrelay/master.key
  chmod 0600 /var/lib/medrelay/master.key
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  # Upgrades restart a running agent; fresh installs are started by the admin.
  if systemctl is-active --quiet medrelayd; then
    systemctl restart medrelayd || true
  fi
fi
cat <<'MSG'
medrelay installed.
  Start it:        sudo systemctl enable --now medrelayd
  Check it:        sudo medrelay status
  Configure:       /etc/medrelay/medrelay.toml (set public_url)
  Back up the key: /var/lib/medrelay/master.key (losing it loses the store)
MSG
exit 0
