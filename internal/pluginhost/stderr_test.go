package pluginhost

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// A plugin's stderr reaches administrators as proto strings (PluginService
// List), which must be valid UTF-8: invalid bytes and a multi-byte rune cut
// by the 500-byte clip must not make List fail to marshal.
func TestStderrLinesAreValidUTF8(t *testing.T) {
	r := newLineRing(5)
	long := strings.Repeat("a", 499) + "é and more" // 'é' straddles byte 500
	for _, w := range []string{"bad \xff\xfe bytes\r\n", long + "\n", "tail without newline \xc3"} {
		if _, err := r.Write([]byte(w)); err != nil {
			t.Fatal(err)
		}
	}
	lines := r.lines()
	if len(lines) != 3 {
		t.Fatalf("lines = %q, want 3", lines)
	}
	for _, l := range lines {
		if !utf8.ValidString(l) {
			t.Errorf("line %q is not valid UTF-8", l)
		}
	}
	if lines[0] != "bad \uFFFD bytes" {
		t.Errorf("line 0 = %q", lines[0])
	}
	if want := strings.Repeat("a", 499) + "…"; lines[1] != want {
		t.Errorf("clipped line = %q…, want the 499 a's and an ellipsis", lines[1][:20])
	}
}
