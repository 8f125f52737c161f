package events_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
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
