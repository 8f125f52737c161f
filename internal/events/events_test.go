package events_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/internal/events"
	"github.com/medrelay/medrelay/internal/store"
)

func openDB(t *testing.T, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{Dir: dir, Key: bytes.Repeat([]byte{3}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestAppsSeeOnlyTheirOwnEventsInOrder(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := events.New(db, quiet)
	for i := range 10 {
		app := "a"
		if i%2 == 1 {
			app = "b"
		}
		if _, err := l.Append(ctx, events.Event{Type: events.ConnectionStateChanged, AppID: app}, events.StateChange{From: "pending", To: "active"}); err != nil {
			t.Fatal(err)
		}
	}
	a, err := l.Read(ctx, events.Filter{AppID: "a"}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 5 {
		t.Fatalf("app a sees %d events, want 5", len(a))
	}
	for i, e := range a {
		if e.AppID != "a" {
			t.Fatalf("app a sees an event of %q", e.AppID)
		}
		if i > 0 && e.Seq <= a[i-1].Seq {
			t.Fatal("out of order")
		}
	}
	// Resume after the second event.
	rest, _ := l.Read(ctx, events.Filter{AppID: "a"}, a[1].Seq, 100)
	if len(rest) != 3 || rest[0].Seq != a[2].Seq {
		t.Fatalf("resume after cursor: %d events", len(rest))
	}
	all, _ := l.Read(ctx, events.Filter{All: true}, 0, 100)
	if len(all) != 10 {
		t.Fatalf("administrator sees %d, want 10", len(all))
	}
}

func TestFollowDeliversBacklogThenLive(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	l := events.New(db, quiet)
	l.Append(ctx, events.Event{Type: "x", AppID: "a"}, nil)
	got := make(chan events.Event, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Follow(ctx, events.Filter{AppID: "a"}, 0, func(e events.Event) error { got <- e; return nil })
	}()
	defer func() { cancel(); <-done }()
	first := <-got
	l.Append(ctx, events.Event{Type: "y", AppID: "b"}, nil)
	l.Append(ctx, events.Event{Type: "z", AppID: "a"}, nil)
	second := <-got
	if first.Type != "x" || second.Type != "z" {
		t.Fatalf("got %s then %s", first.Type, second.Type)
	}
}

func TestEventsSurviveReopenAndPrunedCursorIsRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openDB(t, dir)
	l := events.New(db, quiet, events.WithRetention(time.Hour))
	old := time.Now().Add(-2 * time.Hour)
	e1, _ := l.Append(ctx, events.Event{Type: "old", AppID: "a", Time: old}, nil)
	l.Append(ctx, events.Event{Type: "old", AppID: "a", Time: old}, nil)
	e3, _ := l.Append(ctx, events.Event{Type: "new", AppID: "a"}, nil)
	db.Close()

	db = openDB(t, dir)
	defer db.Close()
	l = events.New(db, quiet, events.WithRetention(time.Hour))
	all, _ := l.Read(ctx, events.Filter{AppID: "a"}, 0, 10)
	if len(all) != 3 {
		t.Fatalf("after reopen %d events", len(all))
	}
	n, err := l.Prune(ctx, time.Now())
	if err != nil || n != 2 {
		t.Fatalf("pruned %d: %v", n, err)
	}
	if _, err := l.Read(ctx, events.Filter{AppID: "a"}, e1.Seq, 10); !errors.Is(err, events.ErrCursorExpired) {
		t.Fatalf("pruned cursor: %v, want ErrCursorExpired", err)
	}
	rest, err := l.Read(ctx, events.Filter{AppID: "a"}, 0, 10)
	if err != nil || len(rest) != 1 || rest[0].Seq != e3.Seq {
		t.Fatalf("from start after prune: %v %v", rest, err)
	}
}

// Appends racing each other commit out of order; a follower must still see
// every event, in sequence order, none skipped.
func TestFollowMissesNothingUnderConcurrentAppends(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := events.New(db, quiet)
	const writers, each = 16, 40
	got := make(chan events.Event, writers*each)
	done := make(chan error, 2)
	fctx, stop := context.WithCancel(ctx)
	go func() {
		done <- l.Follow(fctx, events.Filter{AppID: "a"}, 0, func(e events.Event) error { got <- e; return nil })
	}()
	// A reader polling as fast as it can hits the moment between two
	// out-of-order commits far more often than a woken follower does.
	polled := make(chan int, 1)
	go func() {
		var after uint64
		n := 0
		for fctx.Err() == nil && n < writers*each {
			batch, err := l.Read(fctx, events.Filter{AppID: "a"}, after, 1000)
			if err != nil {
				break
			}
			for _, e := range batch {
				after = e.Seq
				n++
			}
		}
		polled <- n
	}()
	errs := make(chan error, writers)
	// Half the writers append bigger events, which take longer between
	// getting their sequence and committing, so commits may overtake.
	big := map[string]string{"blob": strings.Repeat("x", 16<<10)}
	for w := range writers {
		go func() {
			var data any
			if w%2 == 0 {
				data = big
			}
			for range each {
				if _, err := l.Append(ctx, events.Event{Type: "x", AppID: "a"}, data); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var last uint64
	for i := range writers * each {
		select {
		case e := <-got:
			if e.Seq <= last {
				t.Fatalf("event %d: seq %d after %d", i, e.Seq, last)
			}
			last = e.Seq
		case <-ctx.Done():
			t.Fatalf("follower saw %d of %d events", i, writers*each)
		}
	}
	if n := <-polled; n != writers*each {
		t.Fatalf("polling reader saw %d of %d events", n, writers*each)
	}
	stop()
	<-done
}

// An app whose own events were not pruned keeps its cursor even when other
// apps' older events were.
func TestPruneExpiresOnlyCursorsOfAppsThatLostEvents(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, t.TempDir())
	defer db.Close()
	l := events.New(db, quiet, events.WithRetention(time.Hour))
	old := time.Now().Add(-2 * time.Hour)
	b1, _ := l.Append(ctx, events.Event{Type: "x", AppID: "b", Time: old}, nil)
	b2, _ := l.Append(ctx, events.Event{Type: "x", AppID: "b", Time: old}, nil)
	l.Append(ctx, events.Event{Type: "x", AppID: "a", Time: old}, nil)
	l.Append(ctx, events.Event{Type: "x", AppID: "a", Time: old}, nil)
	b3, _ := l.Append(ctx, events.Event{Type: "x", AppID: "b"}, nil)
	if n, err := l.Prune(ctx, time.Now()); err != nil || n != 4 {
		t.Fatalf("pruned %d: %v", n, err)
	}
	// b's cursor at b2 missed nothing of b's: a's pruned events are not b's.
	rest, err := l.Read(ctx, events.Filter{AppID: "b"}, b2.Seq, 10)
	if err != nil || len(rest) != 1 || rest[0].Seq != b3.Seq {
		t.Fatalf("b after b2: %v %v", rest, err)
	}
	if _, err := l.Read(ctx, events.Filter{AppID: "b"}, b1.Seq, 10); !errors.Is(err, events.ErrCursorExpired) {
		t.Fatalf("b after b1 (b2 pruned): %v, want expired", err)
	}
	// Nor has a reader of b's "y" events, none of which were pruned.
	if _, err := l.Read(ctx, events.Filter{AppID: "b", Types: map[string]bool{"y": true}}, b1.Seq, 10); err != nil {
		t.Fatalf("b's y events after b1: %v", err)
	}
	if _, err := l.Read(ctx, events.Filter{All: true}, b2.Seq, 10); !errors.Is(err, events.ErrCursorExpired) {
		t.Fatalf("all after b2 (a's pruned): %v, want expired", err)
	}
}

func TestHeadIsTheNewestEventAcrossReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openDB(t, dir)
	l := events.New(db, quiet)
	if h, err := l.Head(ctx); err != nil || h != 0 {
		t.Fatalf("empty log head %d %v", h, err)
	}
	l.Append(ctx, events.Event{Type: "x", AppID: "a"}, nil)
	e2, _ := l.Append(ctx, events.Event{Type: "x", AppID: "b"}, nil)
	if h, _ := l.Head(ctx); h != e2.Seq {
		t.Fatalf("head %d, want %d", h, e2.Seq)
	}
	db.Close()
	db = openDB(t, dir)
	defer db.Close()
	l = events.New(db, quiet)
	if h, _ := l.Head(ctx); h != e2.Seq {
		t.Fatalf("head after reopen %d, want %d", h, e2.Seq)
	}
	e3, _ := l.Append(ctx, events.Event{Type: "x", AppID: "a"}, nil)
	after, err := l.Read(ctx, events.Filter{AppID: "a"}, e2.Seq, 10)
	if err != nil || len(after) != 1 || after[0].Seq != e3.Seq {
		t.Fatalf("after head: %v %v", after, err)
	}
}

// Cursors come from apps.
func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{"", "0", "42", "-1", "18446744073709551615", "18446744073709551616", "abc", " 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, c string) {
		v, err := events.ParseCursor(c)
		if err != nil {
			if !errors.Is(err, events.ErrBadCursor) {
				t.Fatalf("%q: unexpected error kind %v", c, err)
			}
			return
		}
		// What we hand out parses back to the same position.
		if again, err := events.ParseCursor((events.Event{Seq: v}).Cursor()); err != nil || again != v {
			t.Fatalf("%q parsed to %d, which does not round-trip", c, v)
		}
	})
}
