package records

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/store"
)

const killChildEnv = "MEDRELAY_RECORDS_KILL_CHILD"

// killFileLines sizes the file the killed ingester works through: big
// enough that random kills land mid-ingest, small enough to stay quick.
const killFileLines = 40000

func TestMain(m *testing.M) {
	if dir := os.Getenv(killChildEnv); dir != "" {
		if err := killChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// killChild is one run of a resumable ingester, as issue 7's sync job will
// be: read the stored progress, continue the file from there, checkpoint in
// the same batches as the records.
func killChild(dir string) error {
	ctx := context.Background()
	db, err := store.Open(ctx, store.Options{Dir: dir, Key: testKey, GCInterval: -1})
	if err != nil {
		return err
	}
	defer db.Close()
	s, err := Open(ctx, db, quiet, WithSegments(filepath.Join(dir, "segments"), segKey))
	if err != nil {
		return err
	}
	defer s.Close()
	table := store.NewTable[[]byte](db, store.Name("test_progress"))
	var sp storedProgress
	v, err := table.Get(ctx, "f")
	switch {
	case err == nil:
		if err := json.Unmarshal(v, &sp); err != nil {
			return err
		}
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	file, _, _ := ndjsonFile(killFileLines)
	pl := progressLog{table: table, key: "f"}
	_, err = s.IngestNDJSON(ctx, "c", bytes.NewReader(file[sp.Position.Offset:]), IngestOptions{
		File: "f.ndjson", Start: sp.Position, Checkpoint: pl.checkpoint(&sp), BatchRecords: 1000,
	})
	return err
}

// The ingester is SIGKILLed at random points (while opening the store,
// mid-batch, mid-flush) and restarted until it finishes: the store ends
// with exactly the file's resources, each once in the change index, and
// each malformed line reported once.
func TestIngestKilledAtRandomPointsResumesExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	const wantKills = 6
	kills, runs, fresh := 0, 0, 0
	for {
		runs++
		if runs > 40 {
			t.Fatalf("no completion after %d runs (%d kills)", runs, kills)
		}
		var stderr bytes.Buffer
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var timer *time.Timer
		if kills < wantKills {
			delay := time.Duration(50+rng.IntN(600)) * time.Millisecond
			timer = time.AfterFunc(delay, func() { _ = cmd.Process.Kill() })
		}
		err := cmd.Wait()
		if timer != nil {
			timer.Stop()
		}
		if !cmd.ProcessState.Exited() {
			kills++
			continue
		}
		if err != nil {
			t.Fatalf("run %d: %v\n%s", runs, err, stderr.String())
		}
		if kills > 0 || fresh >= 3 {
			break
		}
		// Finished before any kill: start over with a fresh store so the
		// test covers kills.
		dir = t.TempDir()
		fresh++
	}
	t.Logf("%d runs, %d killed", runs, kills)

	db := openDB(t, dir)
	defer db.Close()
	s, err := Open(context.Background(), db, quiet, WithSegments(filepath.Join(dir, "segments"), segKey))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	file, want, malformed := ndjsonFile(killFileLines)
	checkExactly(t, s, "c", want)
	pl := progressLog{table: store.NewTable[[]byte](db, store.Name("test_progress")), key: "f"}
	sp := pl.load(t)
	if sp.Position.Offset != int64(len(file)) {
		t.Fatalf("progress %+v, file is %d bytes", sp.Position, len(file))
	}
	if len(sp.Malformed) != malformed {
		t.Fatalf("%d malformed reports, want %d (each once)", len(sp.Malformed), malformed)
	}
	seen := map[int64]bool{}
	for _, m := range sp.Malformed {
		if seen[m.Line] {
			t.Fatalf("line %d reported twice", m.Line)
		}
		seen[m.Line] = true
	}
}
