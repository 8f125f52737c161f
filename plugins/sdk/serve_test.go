package sdk

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// Run by a person, a plugin prints its manifest (with its own sha256) or
// says what it is; it never starts serving.
func TestCommandsForPeople(t *testing.T) {
	t.Setenv(MagicCookieKey, "")
	src := &SMART{Name: "demo", Vendor: "Demo", Version: "1.2.3"}
	var out, errb bytes.Buffer
	if code := serve(src, []string{"manifest"}, &out, &errb); code != 0 {
		t.Fatalf("manifest: %d %s", code, errb.String())
	}
	var m Manifest
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	exe, _ := executable()
	sum, _ := FileSHA256(exe)
	if m.Name != "demo" || m.Version != "1.2.3" || m.SHA256 != sum || len(m.ProtocolVersions) == 0 {
		t.Fatalf("manifest %+v", m)
	}
	out.Reset()
	errb.Reset()
	if code := serve(src, nil, &out, &errb); code != 1 || out.Len() != 0 || !strings.Contains(errb.String(), "medrelay source plugin") {
		t.Fatalf("no args: %d stdout=%q stderr=%q", code, out.String(), errb.String())
	}
	out.Reset()
	if code := serve(src, []string{"describe"}, &out, &errb); code != 0 || !strings.Contains(out.String(), `"CAPABILITY_SEARCH"`) {
		t.Fatalf("describe: %d %s", code, out.String())
	}
}
