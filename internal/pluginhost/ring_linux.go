package pluginhost

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// ringSupported: the agent offers the download ring (memfd and SCM_RIGHTS
// are Linux's). A variable so that tests can take the raw sink.
var ringSupported = ringDefault

// ringDefault is what this system supports.
const ringDefault = true

// ring is the agent's side of a download ring: a sealed memfd mapped
// read-only, and its fd (to hand to the plugin).
type ring struct {
	fd              int
	mem             []byte
	slots, slotSize int
}

func newRing(slots, slotSize int) (*ring, error) {
	fd, err := unix.MemfdCreate("medrelay-ring", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	r := &ring{fd: fd, slots: slots, slotSize: slotSize}
	size := slots * slotSize
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		r.release()
		return nil, fmt.Errorf("sizing the ring: %w", err)
	}
	// Sealed before the plugin sees it: a plugin that truncated the file
	// would turn the agent's next read of a slot into SIGBUS.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		r.release()
		return nil, fmt.Errorf("sealing the ring: %w", err)
	}
	if r.mem, err = unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		r.release()
		return nil, fmt.Errorf("mapping the ring: %w", err)
	}
	return r, nil
}

// handOver sends the hello and the memfd to the plugin. The agent keeps
// its fd for the ring's next download.
func (r *ring) handOver(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return errors.New("the sink is not a unix socket")
	}
	hello := ringHello(r.slots, r.slotSize)
	n, _, err := uc.WriteMsgUnix(hello[:], unix.UnixRights(r.fd), nil)
	if err == nil && n != len(hello) {
		err = fmt.Errorf("short write of the hello (%d bytes)", n)
	}
	return err
}

func (r *ring) closeFD() {
	if r.fd >= 0 {
		_ = unix.Close(r.fd)
		r.fd = -1
	}
}

// release closes and unmaps everything; no slice of the ring may be in
// use (serveRing has returned).
func (r *ring) release() {
	r.closeFD()
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
		r.mem = nil
	}
}
