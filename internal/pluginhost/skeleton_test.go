//go:build unix

package pluginhost

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// What a vendor does, out of tree: copy plugins/skeleton into a directory
// outside the repository as its own module, build it, write its manifest,
// install it; the agent loads it and calls it. Building outside the module
// also proves the skeleton needs nothing of internal/ (Go would refuse).
func TestSkeletonBuiltOutOfTreeIsLoadedAndCalled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a module")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	mod := filepath.Join(work, "acme-plugin")
	if err := os.Mkdir(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(repo, "plugins/skeleton/main.go"))
	if err != nil {
		t.Fatal(err)
	}
	// The vendor renames the plugin.
	src = []byte(strings.Replace(string(src), `Name:    "skeleton"`, `Name:    "acme"`, 1))
	gomod := "module example.com/acme/medrelay-plugin-acme\n\ngo 1.26\n\nrequire github.com/medrelay/medrelay v0.0.0\n\nreplace github.com/medrelay/medrelay => " + repo + "\n"
	sum, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"main.go": src, "go.mod": []byte(gomod), "go.sum": sum} {
		if err := os.WriteFile(filepath.Join(mod, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	plugins := filepath.Join(work, "plugins")
	if err := os.Mkdir(plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(plugins, "medrelay-plugin-acme")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=2.0.0", "-o", bin, ".")
	build.Dir = mod
	// The repository's go.sum covers every module the SDK needs; -mod=mod
	// lets the go command fill in the vendor's go.mod as a vendor would with
	// `go mod tidy`.
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("vendor build: %v\n%s", err, out)
	}
	// What docs/plugins.md tells vendors to run.
	if out, err := exec.Command(bin, "manifest", "--write").CombinedOutput(); err != nil {
		t.Fatalf("manifest: %v\n%s", err, out)
	}
	// And go list proves what it links: no go-plugin, no Badger.
	list := exec.Command("go", "list", "-deps", ".")
	list.Dir = mod
	list.Env = build.Env
	deps, err := list.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, bad := range []string{"github.com/hashicorp/go-plugin", "github.com/dgraph-io/badger", "github.com/medrelay/medrelay/internal/"} {
		if strings.Contains(string(deps), bad) {
			t.Errorf("the vendor plugin links %s", bad)
		}
	}

	sb := newSandbox(t)
	tokens, patient := patientLogin(t, sb, "generic")
	o, _ := testOptions(t, plugins, tokens)
	h := startHost(t, o)
	i, err := h.Info("acme")
	if err != nil || i.State != StateRunning || i.Describe.GetVersion() != "2.0.0" || i.Manifest.Version != "2.0.0" {
		t.Fatalf("info %+v err %v", i, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := h.Read(ctx, "acme", &pluginv1.ReadRequest{Connection: &pluginv1.Connection{Id: "c1", FhirBaseUrl: sb.FHIRBase("generic"), PatientId: patient}, ResourceType: "Patient", Id: patient})
	if err != nil || r.GetId() != patient {
		t.Fatalf("read through the vendor plugin: %v %v", r, err)
	}
	if v := h.Verify(ctx, "acme"); !v[0].OK {
		t.Fatalf("verify: %v", v[0].Err)
	}
}
