package webhooks_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/webhooks"
)

// docs/webhooks.md: "An app may register up to 20 endpoints" and
// WEBHOOK_LIMIT "the app has 20 endpoints". The number is written here, not
// read from the package, so that changing it fails until the docs change.
const documentedEndpointLimit = 20

func TestAppMayRegisterUpTo20Endpoints(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i := range documentedEndpointLimit {
		if _, _, err := e.m.Create(ctx, "app-a", webhooks.CreateRequest{URL: fmt.Sprintf("https://a.example/hook/%d", i)}); err != nil {
			t.Fatalf("endpoint %d of %d: %v", i+1, documentedEndpointLimit, err)
		}
	}
	_, _, err := e.m.Create(ctx, "app-a", webhooks.CreateRequest{URL: "https://a.example/one-too-many"})
	if !errors.Is(err, webhooks.ErrTooMany) || !errors.Is(err, errdefs.ResourceExhausted) {
		t.Fatalf("endpoint %d: %v, want ErrTooMany", documentedEndpointLimit+1, err)
	}
	if _, reason, _ := errdefs.Classify(err); reason != "WEBHOOK_LIMIT" || !strings.Contains(err.Error(), fmt.Sprint(documentedEndpointLimit)) {
		t.Fatalf("refusal %q (reason %q): want WEBHOOK_LIMIT naming the limit", err, reason)
	}
	// The limit is per app.
	if _, _, err := e.m.Create(ctx, "app-b", webhooks.CreateRequest{URL: "https://b.example/hook"}); err != nil {
		t.Fatalf("another app: %v", err)
	}
	// Removing one makes room for one.
	list, _ := e.m.List(ctx, webhooks.Access{AppID: "app-a"})
	if len(list) != documentedEndpointLimit {
		t.Fatalf("app-a has %d endpoints", len(list))
	}
	if _, err := e.m.Delete(ctx, webhooks.Access{AppID: "app-a"}, list[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.m.Create(ctx, "app-a", webhooks.CreateRequest{URL: "https://a.example/again"}); err != nil {
		t.Fatalf("after removing one: %v", err)
	}
}

// Registrations arriving together cannot pass the limit between them.
func TestConcurrentRegistrationsKeepTheLimit(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range documentedEndpointLimit + 10 {
		wg.Go(func() {
			_, _, err := e.m.Create(ctx, "app", webhooks.CreateRequest{URL: fmt.Sprintf("https://a.example/hook/%d", i)})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, webhooks.ErrTooMany):
				refused.Add(1)
			default:
				t.Errorf("create: %v", err)
			}
		})
	}
	wg.Wait()
	list, _ := e.m.List(ctx, webhooks.Access{AppID: "app"})
	if ok.Load() != documentedEndpointLimit || refused.Load() != 10 || len(list) != documentedEndpointLimit {
		t.Fatalf("%d registered, %d refused, %d listed; want %d, 10, %d", ok.Load(), refused.Load(), len(list), documentedEndpointLimit, documentedEndpointLimit)
	}
}
