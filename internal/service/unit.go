package service

import "strconv"

// SystemdUnit is the unit medrelayd installs itself with (kardianos's mini
// template syntax). packaging/systemd/medrelayd.service is the same unit for
// the deb and rpm packages; a test keeps their hardening in step.
//
// KillMode=control-group makes systemd kill the plugins with the agent;
// TimeoutStopSec is longer than the agent's own shutdown deadline.
func SystemdUnit(stopTimeoutSec int) string {
	return `[Unit]
Description={{Description}}
Documentation=https://github.com/medrelay/medrelay/tree/main/docs
ConditionFileIsExecutable={{Path | cmdEscape}}
{{range Dependencies}}{{.}}
{{end}}
[Service]
Type=simple
ExecStart={{Path | cmdEscape}}{{range Arguments}} {{. | cmd}}{{end}}
{{if UserName}}User={{UserName}}
Group={{UserName}}
{{end}}Restart={{Restart}}
RestartSec=5
KillMode=control-group
KillSignal=SIGTERM
TimeoutStopSec=` + strconv.Itoa(stopTimeoutSec) + `
{{if LimitNOFILE}}LimitNOFILE={{LimitNOFILE}}
{{end}}` + hardening + `
{{range EnvVars}}{{.}}
{{end}}[Install]
WantedBy=multi-user.target
`
}

// hardening is shared by the installed unit and the packaged one.
const hardening = `StateDirectory=medrelay
StateDirectoryMode=0700
RuntimeDirectory=medrelay
RuntimeDirectoryMode=0750
ConfigurationDirectory=medrelay
UMask=0077
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
RestrictSUIDSGID=true
RestrictRealtime=true
RestrictNamespaces=true
LockPersonality=true
MemoryDenyWriteExecute=true
SystemCallArchitectures=native
SystemCallFilter=@system-service
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
ReadWritePaths=/var/lib/medrelay /run/medrelay`

// Hardening returns the hardening directives, one per line (tests).
func Hardening() string { return hardening }
