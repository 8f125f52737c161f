package api

import "testing"

// Page tokens come from callers: any string must decode or be refused
// cleanly, and what we issue must round-trip.
func FuzzPageToken(f *testing.F) {
	for _, s := range []string{"", "djE6YXBwXzEyMw", "garbage", "v1:", "%%%", "djE6"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		cur, err := decodePageToken(tok)
		if err != nil {
			return
		}
		if tok != "" && encodePageToken(cur) != tok && cur != "" {
			// Non-canonical base64 may decode; it must still decode to the
			// same cursor when re-encoded.
			again, err := decodePageToken(encodePageToken(cur))
			if err != nil || again != cur {
				t.Fatalf("%q → %q does not round-trip", tok, cur)
			}
		}
	})
}
