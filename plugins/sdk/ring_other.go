//go:build !linux

package sdk

import (
	"fmt"
	"io"
	"net"
)

// ringSupported: no memfd here; the SDK does not declare CapDownloadRing.
const ringSupported = false

// openRing reads the agent's hello and declines: an agent only offers the
// ring to a plugin that declared it, so this is a defence, not a path.
func openRing(c net.Conn) (*ringMap, error) {
	var hello [ringMsgSize]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return nil, err
	}
	if _, _, err := parseRingHello(hello[:]); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: not supported on this system", errRingDeclined)
}
