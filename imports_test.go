// The import rules of docs/design.md §3, enforced: what each part of the
// repository may import, directly or transitively. A rule broken here is a
// design decision to be argued in review, not a test to be loosened.
package medrelay_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"path"
	"strings"
	"testing"
)

const mod = "github.com/medrelay/medrelay"

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
	Standard   bool
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Imports,Deps,Standard", "./...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	return pkgs
}

func under(p, prefix string) bool {
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

func ours(p string) bool { return under(p, mod) }

// outside libraries and the one package (tree) allowed to import each.
var owners = map[string][]string{
	"github.com/dgraph-io/badger/v4":      {mod + "/internal/store"},
	"github.com/kardianos/service":        {mod + "/internal/service"},
	"golang.org/x/oauth2":                 {mod + "/internal/oauth"},
	"github.com/prometheus/client_golang": {mod + "/internal/telemetry"},
	// go-plugin: only the host. The SDK speaks the plugin side of the
	// protocol itself, so plugins link no go-plugin code at all.
	"github.com/hashicorp/go-plugin": {mod + "/internal/pluginhost"},
}

func TestImportRules(t *testing.T) {
	pkgs := listPackages(t)
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	for _, p := range pkgs {
		ip := p.ImportPath
		rel := strings.TrimPrefix(ip, mod+"/")

		// One owner per outside library (direct imports).
		for _, imp := range p.Imports {
			for lib, allowed := range owners {
				if !under(imp, lib) {
					continue
				}
				ok := false
				for _, a := range allowed {
					ok = ok || under(ip, a)
				}
				// The sandbox plays the EHR and may use what it likes,
				// except our store and plugin host.
				if !ok && !under(ip, mod+"/internal/sandbox") {
					t.Errorf("%s imports %s; only %v may", rel, imp, allowed)
				}
			}
		}

		if under(ip, mod+"/agent/cmd") {
			for _, dep := range p.Deps {
				if under(dep, "github.com/blevesearch") {
					t.Errorf("%s links %s (the directory bench's baseline only)", rel, dep)
				}
			}
		}

		var allowedOurs func(dep string) bool
		switch {
		case under(ip, mod+"/proto/gen"):
			allowedOurs = func(dep string) bool { return under(dep, mod+"/proto/gen") }
		case under(ip, mod+"/agent/client"):
			allowedOurs = func(dep string) bool { return under(dep, mod+"/proto/gen") || under(dep, mod+"/agent/client") }
		case under(ip, mod+"/agent/cmd/medrelay"):
			allowedOurs = func(dep string) bool {
				return under(dep, mod+"/proto/gen") || under(dep, mod+"/agent/client") || under(dep, mod+"/agent/cmd/medrelay")
			}
		case under(ip, mod+"/plugins/sdk"):
			allowedOurs = func(dep string) bool { return under(dep, mod+"/proto/gen") || under(dep, mod+"/plugins/sdk") }
		case under(ip, mod+"/plugins"):
			// A vendor plugin gets exactly what an out-of-tree one gets.
			vendor := mod + "/plugins/" + strings.SplitN(strings.TrimPrefix(ip, mod+"/plugins/"), "/", 2)[0]
			allowedOurs = func(dep string) bool {
				return under(dep, mod+"/proto/gen") || under(dep, mod+"/plugins/sdk") || under(dep, vendor)
			}
		default:
			continue
		}
		for _, dep := range p.Deps {
			if ours(dep) && !allowedOurs(dep) {
				t.Errorf("%s depends on %s (not allowed for %s)", rel, strings.TrimPrefix(dep, mod+"/"), path.Dir(rel))
			}
		}
		// The CLI, the client library, the SDK and plugins link neither
		// Badger nor kardianos.
		for _, dep := range p.Deps {
			if under(dep, "github.com/dgraph-io/badger") || under(dep, "github.com/kardianos/service") {
				t.Errorf("%s links %s", rel, dep)
			}
		}
		// The CLI, the client library, the SDK and the plugins link no
		// go-plugin code (nor its logger or multiplexer).
		for _, dep := range p.Deps {
			for _, lib := range []string{"github.com/hashicorp/go-plugin", "github.com/hashicorp/go-hclog", "github.com/hashicorp/yamux"} {
				if under(dep, lib) {
					t.Errorf("%s links %s", rel, dep)
				}
			}
		}
	}
}
