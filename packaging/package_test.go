package packaging_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blakesmith/ar"

	"github.com/medrelay/medrelay/internal/config"
	"github.com/medrelay/medrelay/internal/service"
)

type entry struct {
	mode         int64
	uname, gname string
	typ          byte
	body         []byte
}

// buildPackages builds the real binaries and packages them.
func buildPackages(t *testing.T) (deb, rpm string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds binaries and packages")
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	cmd := exec.Command("go", "build", "-o", bin+"/", "github.com/medrelay/medrelay/agent/cmd/medrelayd", "github.com/medrelay/medrelay/agent/cmd/medrelay",
		"github.com/medrelay/medrelay/packaging/cmd/mkpkg")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// The packages are built by the real `make package` tool in its own
	// process: under the race detector (make test) compressing tens of
	// megabytes in this process takes minutes.
	dist := filepath.Join(tmp, "dist")
	out, err := exec.Command(filepath.Join(bin, "mkpkg"), "-root", "..", "-bin", bin, "-out", dist, "-version", "v1.2.3", "-arch", "amd64").CombinedOutput()
	if err != nil {
		t.Fatalf("mkpkg: %v\n%s", err, out)
	}
	paths := strings.Fields(string(out))
	for _, p := range paths {
		switch filepath.Ext(p) {
		case ".deb":
			deb = p
		case ".rpm":
			rpm = p
		}
	}
	if deb == "" || rpm == "" {
		t.Fatalf("packages: %v", paths)
	}
	return deb, rpm
}

// readDeb returns the files of a .deb's data and control archives.
func readDeb(t *testing.T, path string) (data, control map[string]entry) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := ar.NewReader(f)
	data, control = map[string]entry{}, map[string]entry{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimRight(h.Name, "/")
		var dst map[string]entry
		switch {
		case strings.HasPrefix(name, "data.tar"):
			dst = data
		case strings.HasPrefix(name, "control.tar"):
			dst = control
		default:
			continue
		}
		if !strings.HasSuffix(name, ".gz") {
			t.Fatalf("unexpected compression %s", name)
		}
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		for {
			th, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(tr)
			dst[strings.TrimPrefix(strings.TrimSuffix(th.Name, "/"), ".")] = entry{mode: th.Mode & 0o7777, uname: th.Uname, gname: th.Gname, typ: th.Typeflag, body: body}
		}
	}
	return data, control
}

func TestPackagesHoldTheRightFilesWithTheRightModes(t *testing.T) {
	deb, rpm := buildPackages(t)
	data, control := readDeb(t, deb)

	want := []struct {
		path        string
		mode        int64
		user, group string
	}{
		{"/usr/bin/medrelayd", 0o755, "root", "root"},
		{"/usr/bin/medrelay", 0o755, "root", "root"},
		{"/lib/systemd/system/medrelayd.service", 0o644, "root", "root"},
		{"/etc/medrelay/medrelay.toml", 0o640, "root", "medrelay"},
		{"/usr/lib/medrelay/plugins", 0o755, "root", "root"},
		{"/usr/share/doc/medrelay/README.md", 0o644, "root", "root"},
	}
	for _, w := range want {
		e, ok := data[w.path]
		if !ok {
			t.Errorf("deb lacks %s", w.path)
			continue
		}
		if e.mode != w.mode || e.uname != w.user || e.gname != w.group {
			t.Errorf("deb %s: %04o %s:%s, want %04o %s:%s", w.path, e.mode, e.uname, e.gname, w.mode, w.user, w.group)
		}
	}
	// No state in the package: the store and key are made on the machine.
	for p := range data {
		if strings.HasPrefix(p, "/var/lib/medrelay/") {
			t.Errorf("package ships state file %s", p)
		}
	}
	// The config survives upgrades.
	if !strings.Contains(string(control["/conffiles"].body), "/etc/medrelay/medrelay.toml") {
		t.Errorf("medrelay.toml is not a conffile: %q", control["/conffiles"].body)
	}
	// Maintainer scripts create the user, groups and directories with modes.
	pre, post := string(control["/preinst"].body), string(control["/postinst"].body)
	for _, s := range []string{"useradd --system", "groupadd --system medrelay", "groupadd --system medrelay-admin"} {
		if !strings.Contains(pre, s) {
			t.Errorf("preinst lacks %q", s)
		}
	}
	for _, s := range []string{"install -d -m 0700 -o medrelay -g medrelay /var/lib/medrelay", "install -d -m 0750 -o root -g medrelay /etc/medrelay"} {
		if !strings.Contains(post, s) {
			t.Errorf("postinst lacks %q", s)
		}
	}
	// The packaged unit carries the same hardening as `medrelayd service install`.
	unit := string(data["/lib/systemd/system/medrelayd.service"].body)
	if !strings.Contains(unit, service.Hardening()) {
		t.Errorf("packaged unit's hardening differs from internal/service:\n%s", unit)
	}
	for _, s := range []string{"KillMode=control-group", "Restart=on-failure", "User=medrelay", "TimeoutStopSec="} {
		if !strings.Contains(unit, s) {
			t.Errorf("packaged unit lacks %s", s)
		}
	}

	// The rpm: read with rpm(8) when this machine has it (.ci/run installs it).
	if _, err := exec.LookPath("rpm"); err != nil {
		t.Logf("rpm(8) not installed: rpm contents not checked")
		return
	}
	out, err := exec.Command("rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]", rpm).Output()
	if err != nil {
		t.Fatalf("rpm -qp: %v", err)
	}
	for _, line := range []string{
		"-rwxr-xr-x root root /usr/bin/medrelayd",
		"-rw-r----- root medrelay /etc/medrelay/medrelay.toml",
		"-rw-r--r-- root root /lib/systemd/system/medrelayd.service",
	} {
		if !bytes.Contains(out, []byte(line)) {
			t.Errorf("rpm lacks %q:\n%s", line, out)
		}
	}
	scripts, _ := exec.Command("rpm", "-qp", "--scripts", rpm).Output()
	if !bytes.Contains(scripts, []byte("useradd --system")) || !bytes.Contains(scripts, []byte("install -d -m 0700 -o medrelay")) {
		t.Errorf("rpm scripts:\n%s", scripts)
	}
}

// The configuration the package installs is one the agent accepts, with
// the values its comments promise.
func TestPackagedConfigLoads(t *testing.T) {
	c, err := config.Load("medrelay.toml", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.MemoryLimit != 512<<20 || c.AdminAddr != "127.0.0.1:8751" {
		t.Fatalf("memory_limit %d, admin_addr %q", c.MemoryLimit, c.AdminAddr)
	}
}
