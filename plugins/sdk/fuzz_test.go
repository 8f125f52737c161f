package sdk

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

// Parsers of what sources send: they must never panic, and what they accept
// must be consistent.

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"120", "0", "-5", "Wed, 21 Oct 2015 07:28:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT", "99999999999999999999", "", "1e3"} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := ParseRetryAfter(s, now)
		if ok && d < 0 {
			t.Fatalf("negative wait %v for %q", d, s)
		}
	})
}

func FuzzParseBundle(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Bundle","total":2,"link":[{"relation":"next","url":"x?page=2"}],"entry":[{"resource":{"resourceType":"Patient","id":"1"},"search":{"mode":"match"}},{"resource":null}]}`))
	f.Add([]byte(`{"resourceType":"OperationOutcome"}`))
	f.Add([]byte(`{"resourceType":"Bundle","entry":[{"resource":{"id":"x"}}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		bd, err := ParseBundle(b)
		if err != nil {
			return
		}
		_ = bd.Next()
		rs, err := bd.Resources()
		if err != nil {
			return
		}
		for _, r := range rs {
			if r.Type == "" {
				t.Fatal("resource without type accepted")
			}
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"transactionTime":"2026-01-01T00:00:00Z","request":"x","requiresAccessToken":true,"output":[{"type":"Patient","url":"http://h/f","count":3}],"deleted":[{"type":"Bundle","url":"http://h/d"}],"error":[]}`))
	f.Add([]byte(`{"output":[{"type":"Patient"}]}`))
	f.Add([]byte(`{"transactionTime":"yesterday"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		for _, o := range m.Output {
			if o.URL == "" {
				t.Fatal("output without url accepted")
			}
		}
	})
}

func FuzzReferences(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Practitioner/x/_history/2"},{"reference":"https://other/Practitioner/y"},{"reference":"#c1"}],"contained":[{"reference":"Organization/o"}]}`))
	f.Add([]byte(`{"a":{"reference":"Patient?identifier=x"}}`))
	f.Add([]byte(`[[[[[[[[[[{"reference":"A/b"}]]]]]]]]]]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, r := range References(b) {
			if _, ok := relativeRef(r); !ok {
				t.Fatalf("References returned %q, which is not a relative reference", r)
			}
		}
	})
}

func FuzzDiagnostics(f *testing.F) {
	f.Add([]byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"no such patient"}]}`))
	f.Add([]byte(`{"error":"invalid_grant","error_description":"expired"}`))
	f.Add([]byte(`<html>bad gateway</html>`))
	f.Add([]byte("plain text \xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d := Diagnostics(b); len(d) > 310 {
			t.Fatalf("diagnostics of %d bytes", len(d))
		}
	})
}

// What the agent sends on a download ring: the plugin never writes outside
// its ring's slots, and ends (with an error unless the file went through).
func FuzzRingCredits(f *testing.F) {
	free := func(slots ...uint32) []byte {
		b := make([]byte, ringMsgSize*len(slots))
		for i, s := range slots {
			putRingMsg(b[i*ringMsgSize:], ringFree, s, 0)
		}
		return b
	}
	f.Add(free(0, 1, 2, 0, 1, 2, 0, 1, 2))
	f.Add(free(0, 0))
	f.Add(free(7))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, credits []byte) {
		const slots, size, fileSize = 3, 16, 200
		guard := make([]byte, slots*size+64)
		rm := &ringMap{mem: guard[32 : 32+slots*size], slots: slots, slotSize: size, release: func() {}}
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(credits), io.Discard}
		n, err := fillRing(rw, rm, bytes.NewReader(bytes.Repeat([]byte{0xff}, fileSize)))
		if n > fileSize || (err == nil && n != fileSize) {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if bytes.IndexByte(guard[:32], 0xff) >= 0 || bytes.IndexByte(guard[32+slots*size:], 0xff) >= 0 {
			t.Fatal("wrote outside the ring")
		}
	})
}

func FuzzParseRingHello(f *testing.F) {
	h := make([]byte, ringMsgSize)
	copy(h, ringMagic)
	binary.LittleEndian.PutUint32(h[4:], 8)
	binary.LittleEndian.PutUint32(h[8:], 1<<20)
	f.Add(h)
	f.Add([]byte("MRR1\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < ringMsgSize {
			return
		}
		slots, size, err := parseRingHello(b)
		if err == nil && (slots < 1 || size < ringMinSlotSize || slots*size > ringMaxSize) {
			t.Fatalf("accepted %d x %d", slots, size)
		}
	})
}
