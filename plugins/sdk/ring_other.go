//go:build !linux

package sdk

import "net"

// ringSupported: no memfd here; the SDK does not declare CapDownloadRing.
const ringSupported = false

// openRing reads the agent's hello and declines: an agent only offers the
// ring to a plugin that declared it, so this is a defence, not a path.
func openRing(c net.Conn) (*ringMap, error) {
	return nil, declineHello(c, "not supported on this system")
}
