package records

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unsafe"
)

// Keys of the tables earlier versions kept, read only to convert them
// (legacy.go). Every key starts with the connection id, so a connection's
// records are one key range in each table.
//
//	records         conn/type/id    → head
//	record_changes  conn/seq/type   → change (header + raw JSON)
//	record_pending  conn            → first seq of the batch being written
//
// seq is 16 lowercase hex digits so keys sort in change order.

// headKey was the key of the heads table an earlier version kept (see
// dropLegacyHeads; its test writes one).
func headKey(conn, typ, id string) string { return conn + "/" + typ + "/" + id }

func changeKey(conn string, seq uint64, typ string) string {
	return conn + "/" + seqHex(seq) + "/" + typ
}

// afterSeq is a scan position just past every change key of seq (type
// names are letters, all below 0x7f).
func afterSeq(conn string, seq uint64) string { return conn + "/" + seqHex(seq) + "/\x7f" }

// parseChangeKey splits the part of a change key after "conn/".
func parseChangeKey(rest string) (uint64, string, error) {
	if len(rest) < 18 || rest[16] != '/' {
		return 0, "", fmt.Errorf("bad change key %q", rest)
	}
	seq, err := parseSeqHex(rest[:16])
	return seq, rest[17:], err
}

func seqHex(seq uint64) string {
	var b [16]byte
	const digits = "0123456789abcdef"
	for i := 15; i >= 0; i-- {
		b[i] = digits[seq&0xf]
		seq >>= 4
	}
	return string(b[:])
}

func parseSeqHex(s string) (uint64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("bad sequence %q", s)
	}
	return strconv.ParseUint(s, 16, 64)
}

const (
	formatV1    = 1
	flagDeleted = 1
	// flagExternal: the body is in a segment (loc), not in the value.
	flagExternal = 2
)

var errCorrupt = errors.New("records: corrupt stored value")

// head is a resource's current state: where its latest change is, and
// enough to decide whether an incoming copy is new.
type head struct {
	seq         uint64
	deleted     bool
	lastUpdated int64 // Unix nanoseconds; 0 = unknown
	hash        uint64
	versionID   string
}

// change is one entry of the change index: the resource as it was stored at
// that change (or a tombstone), and the change it superseded (prev), which
// the change log no longer lists (changelog.go).
type change struct {
	prev        uint64
	deleted     bool
	lastUpdated int64
	hash        uint64
	typ, id     string
	versionID   string
	json        []byte // the body, when stored in the value
	ext         bool   // the body is in a segment, at loc
	loc         loc
}

func (c *change) appendHeader(b []byte) []byte {
	f := flags(c.deleted)
	if c.ext {
		f |= flagExternal
	}
	b = append(b, formatV1, f)
	b = binary.AppendUvarint(b, c.prev)
	b = binary.AppendVarint(b, c.lastUpdated)
	b = binary.LittleEndian.AppendUint64(b, c.hash)
	b = appendString(b, c.typ)
	b = appendString(b, c.id)
	b = appendString(b, c.versionID)
	if c.ext {
		b = binary.AppendUvarint(b, c.loc.seg)
		b = binary.AppendUvarint(b, c.loc.off)
		b = binary.AppendUvarint(b, c.loc.n)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// names interns resource type names while decoding many changes (a handful
// of types across a million records need not be a million strings).
type names map[string]string

func (n names) get(b []byte) string {
	if n == nil {
		return string(b)
	}
	if s, ok := n[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(n) < 1024 {
		n[s] = s
	}
	return s
}

// decodeChange reads a stored change. json aliases v (no copy).
func decodeChange(v []byte, types names) (change, error) {
	var c change
	if len(v) < 2 || v[0] != formatV1 {
		return c, errCorrupt
	}
	c.deleted = v[1]&flagDeleted != 0
	c.ext = v[1]&flagExternal != 0
	v = v[2:]
	var n int
	if c.prev, n = binary.Uvarint(v); n <= 0 {
		return c, errCorrupt
	}
	v = v[n:]
	if c.lastUpdated, n = binary.Varint(v); n <= 0 {
		return c, errCorrupt
	}
	v = v[n:]
	if len(v) < 8 {
		return c, errCorrupt
	}
	c.hash = binary.LittleEndian.Uint64(v)
	v = v[8:]
	l, n := binary.Uvarint(v)
	if n <= 0 || uint64(len(v)-n) < l {
		return c, errCorrupt
	}
	c.typ, v = types.get(v[n:n+int(l)]), v[n+int(l):]
	var ok bool
	if c.id, v, ok = readString(v); !ok {
		return c, errCorrupt
	}
	if c.versionID, v, ok = readString(v); !ok {
		return c, errCorrupt
	}
	if !c.ext {
		c.json = v
		return c, nil
	}
	for _, f := range []*uint64{&c.loc.seg, &c.loc.off, &c.loc.n} {
		if *f, n = binary.Uvarint(v); n <= 0 {
			return c, errCorrupt
		}
		v = v[n:]
	}
	if len(v) != 0 {
		return c, errCorrupt
	}
	return c, nil
}

// typeBytes is the resource type of a stored change (nil when the value
// does not decode): a type-filtered list reads it without decoding the rest.
func typeBytes(v []byte) []byte {
	if len(v) < 2 || v[0] != formatV1 {
		return nil
	}
	v = v[2:]
	_, n := binary.Uvarint(v)
	if n <= 0 {
		return nil
	}
	v = v[n:]
	if _, n = binary.Varint(v); n <= 0 || len(v)-n < 8 {
		return nil
	}
	v = v[n+8:]
	l, n := binary.Uvarint(v)
	if n <= 0 || uint64(len(v)-n) < l {
		return nil
	}
	return v[n : n+int(l)]
}

// appendChange encodes c as stored: its header, then the body when it is
// kept inline.
func appendChange(b []byte, c *change) []byte {
	b = c.appendHeader(b)
	if !c.ext {
		b = append(b, c.json...)
	}
	return b
}

// readString reads a length-prefixed string. It aliases v rather than
// copying (a list decodes a million ids): a change's bytes are a block
// read into a buffer of its own, or a Badger value used only inside its
// transaction, and are never written to afterwards.
func readString(v []byte) (string, []byte, bool) {
	l, n := binary.Uvarint(v)
	if n <= 0 || uint64(len(v)-n) < l {
		return "", nil, false
	}
	if l == 0 {
		return "", v[n:], true
	}
	return unsafe.String(&v[n], int(l)), v[n+int(l):], true
}

func (c *change) head(seq uint64) head {
	return head{seq: seq, deleted: c.deleted, lastUpdated: c.lastUpdated, hash: c.hash, versionID: c.versionID}
}

func flags(deleted bool) byte {
	if deleted {
		return flagDeleted
	}
	return 0
}

// unixNanos is t in Unix nanoseconds; 0 (unknown) for the zero time and for
// times UnixNano cannot represent.
func unixNanos(t time.Time) int64 {
	if t.IsZero() || t.Year() < 1700 || t.Year() > 2200 {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
