//go:build !linux

package pluginhost

import (
	"errors"
	"net"
)

// ringSupported: no memfd here; downloads take the raw sink.
var ringSupported = ringDefault

// ringDefault is what this system supports.
const ringDefault = false

type ring struct {
	mem             []byte
	slots, slotSize int
}

func newRing(int, int) (*ring, error) { return nil, errors.ErrUnsupported }

func (r *ring) handOver(net.Conn) error { return errors.ErrUnsupported }

func (r *ring) release() {}
