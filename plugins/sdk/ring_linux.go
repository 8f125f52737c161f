package sdk

import (
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// ringSupported: this build can map the agent's ring (memfd over
// SCM_RIGHTS), so the SDK declares CapDownloadRing with CapDownloadSink.
const ringSupported = true

// openRing reads the agent's hello with its memfd and maps the ring. What
// keeps the ring from being used here is errRingDeclined (the agent then
// gets raw bytes); a hello that is not one is errRingProtocol.
func openRing(c net.Conn) (*ringMap, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, declineHello(c, "the sink is not a unix socket")
	}
	var hello [ringMsgSize]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := uc.ReadMsgUnix(hello[:], oob)
	if err != nil {
		return nil, err
	}
	// Go's ReadMsgUnix receives fds close-on-exec. Keep the first; any
	// other is not ours to hold.
	fd := -1
	if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range cmsgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				continue
			}
			for _, f := range fds {
				if fd < 0 {
					fd = f
				} else {
					unix.Close(f)
				}
			}
		}
	}
	if fd >= 0 {
		defer unix.Close(fd) // the mapping outlives it
	}
	if _, err := io.ReadFull(uc, hello[n:]); err != nil {
		return nil, err
	}
	slots, slotSize, err := parseRingHello(hello[:])
	if err != nil {
		return nil, err
	}
	if fd < 0 {
		return nil, fmt.Errorf("%w: no file descriptor came with the agent's hello (flags %#x)", errRingDeclined, flags)
	}
	size := slots * slotSize
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size < int64(size) {
		return nil, fmt.Errorf("%w: the ring file is %d bytes, not %d (%v)", errRingDeclined, st.Size, size, err)
	}
	// Writing past the end of a shrunk file would kill the plugin with
	// SIGBUS: only a ring sealed against shrinking is safe to fill.
	if seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0); err != nil || seals&unix.F_SEAL_SHRINK == 0 {
		return nil, fmt.Errorf("%w: the ring file is not sealed against shrinking (%v)", errRingDeclined, err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%w: mapping the ring: %v", errRingDeclined, err)
	}
	return &ringMap{mem: mem, slots: slots, slotSize: slotSize, release: func() { _ = unix.Munmap(mem) }, prefault: prefault}, nil
}

// prefault maps b's pages in for writing (Linux 5.14; on older kernels the
// pages fault in as they are written).
func prefault(b []byte) {
	_ = unix.Madvise(b, unix.MADV_POPULATE_WRITE)
}
