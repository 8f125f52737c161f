package sdk

import (
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
