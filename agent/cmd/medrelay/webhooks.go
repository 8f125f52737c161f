package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func webhooksCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhooks",
		Short: "Manage the HTTP endpoints that receive an app's events",
		Long: `Webhook endpoints receive an app's events as signed CloudEvents JSON, at least once and in
order, retried for about three and a half days; then the endpoint is disabled (and says so in the
app's events). Endpoints belong to the app that created them: run these commands as the app
(--app-token or $MEDRELAY_APP_TOKEN). Administrators can list, show, enable, disable, remove and
redeliver for every app.`,
	}

	var types []string
	var all bool
	var description string
	add := &cobra.Command{
		Use:   "add URL",
		Short: "Register an endpoint and print its signing secret (shown once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(types) > 0) {
				return fmt.Errorf("choose the events to deliver: --events a,b or --all")
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Webhooks.CreateWebhook(ctx, &agentv1.CreateWebhookRequest{
					Url: args[0], Description: description, EventTypes: types, AllEvents: all,
				})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					w := resp.GetWebhook()
					fmt.Fprintf(out, "Created webhook %s → %s (%s).\n\n", w.GetId(), w.GetUrl(), eventTypes(w))
					fmt.Fprintf(out, "Signing secret (shown once; verify the Medrelay-Signature header with it):\n\n  %s\n\n", resp.GetSecret())
					fmt.Fprintf(out, "See docs/webhooks.md for verifying in Go, Python, Node and Java.\n")
					return nil
				})
			})
		},
	}
	add.Flags().StringSliceVar(&types, "events", nil, "event types to deliver, comma-separated (e.g. connection.state_changed,session.completed)")
	add.Flags().BoolVar(&all, "all", false, "deliver every event type, including types added later")
	add.Flags().StringVar(&description, "description", "", "a note for people")

	list := &cobra.Command{
		Use:   "list",
		Short: "List endpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Webhooks.ListWebhooks(ctx, &agentv1.ListWebhooksRequest{})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					t := newTable(out, "ID", "APP", "URL", "EVENTS", "STATE", "DELIVERED", "LAST SUCCESS", "PENDING")
					for _, w := range resp.GetWebhooks() {
						d := w.GetDelivery()
						t.row(w.GetId(), w.GetAppId(), w.GetUrl(), eventTypes(w), webhookState(w), strconv.FormatUint(d.GetDelivered(), 10), ago(d.GetLastSuccessAt()), pendingText(d))
					}
					return t.flush()
				})
			})
		},
	}

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show an endpoint, where its delivery stands, and its latest attempts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Webhooks.GetWebhook(ctx, &agentv1.GetWebhookRequest{Id: args[0]})
				if err != nil {
					return err
				}
				ats, err := c.Webhooks.ListWebhookAttempts(ctx, &agentv1.ListWebhookAttemptsRequest{Id: args[0], PageSize: 10})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error { return printWebhook(out, resp.GetWebhook(), ats.GetAttempts()) })
			})
		},
	}

	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove an endpoint (its pending deliveries and attempt history go with it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Webhooks.DeleteWebhook(ctx, &agentv1.DeleteWebhookRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					fmt.Fprintf(out, "Removed webhook %s (%s).\n", resp.GetWebhook().GetId(), resp.GetWebhook().GetUrl())
					return nil
				})
			})
		},
	}

	rotate := &cobra.Command{
		Use:   "rotate-secret ID",
		Short: "Give an endpoint a new signing secret (the previous one signs too for 24 hours)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Webhooks.RotateWebhookSecret(ctx, &agentv1.RotateWebhookSecretRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					fmt.Fprintf(out, "New signing secret for %s (shown once):\n\n  %s\n\n", resp.GetWebhook().GetId(), resp.GetSecret())
					fmt.Fprintf(out, "Until %s deliveries carry a signature with the previous secret too; switch the receiver before then.\n",
						resp.GetWebhook().GetPreviousSecretUntil().AsTime().Local().Format(time.DateTime))
					return nil
				})
			})
		},
	}

	var eventID string
	var limit int
	attempts := &cobra.Command{
		Use:   "events ID",
		Short: "List an endpoint's delivery attempts, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &agentv1.ListWebhookAttemptsRequest{Id: args[0], EventId: eventID}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var all []*agentv1.WebhookAttempt
				for {
					req.PageSize = int32(min(max(limit-len(all), 1), 500))
					resp, err := c.Webhooks.ListWebhookAttempts(ctx, req)
					if err != nil {
						return err
					}
					all = append(all, resp.GetAttempts()...)
					if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" || len(all) >= limit {
						break
					}
				}
				return g.printResult(cmd, &agentv1.ListWebhookAttemptsResponse{Attempts: all}, func(out io.Writer) error { return attemptsTable(out, all) })
			})
		},
	}
	attempts.Flags().StringVar(&eventID, "event", "", "only the attempts of this event id")
	attempts.Flags().IntVar(&limit, "limit", 50, "at most this many attempts")

	var endpoint string
	redeliver := &cobra.Command{
		Use:   "redeliver EVENT_ID",
		Short: "Send an event again now, once (to --endpoint, or to every enabled endpoint that takes it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Webhooks.RedeliverWebhookEvent(ctx, &agentv1.RedeliverWebhookEventRequest{EventId: args[0], WebhookId: endpoint})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					if len(resp.GetAttempts()) == 0 {
						fmt.Fprintln(out, "No enabled endpoint takes this event (name one with --endpoint).")
						return nil
					}
					t := newTable(out, "WEBHOOK", "EVENT", "RESULT", "LATENCY", "RESPONSE")
					for _, a := range resp.GetAttempts() {
						t.row(a.GetWebhookId(), a.GetEventId(), attemptResult(a), a.GetLatency().AsDuration().Round(time.Millisecond).String(), clip(a.GetResponse(), 60))
					}
					return t.flush()
				})
			})
		},
	}
	redeliver.Flags().StringVar(&endpoint, "endpoint", "", "only to this webhook id (even if disabled or not subscribed to the type)")

	var fromOldest, fromNow bool
	enable := &cobra.Command{
		Use:   "enable ID",
		Short: "Resume deliveries to a disabled endpoint, with the event that failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &agentv1.EnableWebhookRequest{Id: args[0]}
			switch {
			case fromOldest && fromNow:
				return fmt.Errorf("--from-oldest-retained and --from-now exclude each other")
			case fromOldest:
				req.Resume = agentv1.EnableWebhookRequest_RESUME_OLDEST_RETAINED
			case fromNow:
				req.Resume = agentv1.EnableWebhookRequest_RESUME_NOW
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Webhooks.EnableWebhook(ctx, req)
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					fmt.Fprintf(out, "Enabled webhook %s; delivering after event %s.\n", resp.GetWebhook().GetId(), resp.GetWebhook().GetDelivery().GetCursor())
					return nil
				})
			})
		},
	}
	enable.Flags().BoolVar(&fromOldest, "from-oldest-retained", false, "accept that pruned events are lost and resume with the oldest retained one")
	enable.Flags().BoolVar(&fromNow, "from-now", false, "skip everything not delivered and resume with the next new event")

	disable := &cobra.Command{
		Use:   "disable ID",
		Short: "Stop deliveries to an endpoint until it is enabled again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Webhooks.DisableWebhook(ctx, &agentv1.DisableWebhookRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					fmt.Fprintf(out, "Disabled webhook %s; events keep accumulating for it (enable to resume).\n", resp.GetWebhook().GetId())
					return nil
				})
			})
		},
	}

	cmd.AddCommand(add, list, show, remove, rotate, attempts, redeliver, enable, disable)
	return cmd
}

// printWebhook shows an endpoint, where its delivery stands, and its
// latest attempts.
func printWebhook(out io.Writer, w *agentv1.Webhook, attempts []*agentv1.WebhookAttempt) error {
	d := w.GetDelivery()
	kv := newTable(out, "FIELD", "VALUE")
	kv.row("id", w.GetId())
	kv.row("app", w.GetAppId())
	kv.row("url", w.GetUrl())
	kv.row("description", w.GetDescription())
	kv.row("events", eventTypes(w))
	kv.row("state", webhookState(w))
	if w.GetState() == agentv1.Webhook_STATE_DISABLED {
		kv.row("disabled", ago(w.GetDisabledAt()))
		kv.row("reason", w.GetDisabledReason())
	}
	kv.row("created", ago(w.GetCreatedAt()))
	kv.row("secret rotated", ago(w.GetSecretRotatedAt()))
	if p := w.GetPreviousSecretUntil(); p != nil && p.AsTime().After(time.Now()) {
		kv.row("previous secret signs until", p.AsTime().Local().Format(time.DateTime))
	}
	kv.row("delivered through event", d.GetCursor())
	kv.row("delivered", strconv.FormatUint(d.GetDelivered(), 10))
	kv.row("last success", ago(d.GetLastSuccessAt()))
	kv.row("last failure", ago(d.GetLastFailureAt()))
	kv.row("last error", d.GetLastError())
	kv.row("pending", pendingText(d))
	if err := kv.flush(); err != nil {
		return err
	}
	if len(attempts) > 0 {
		fmt.Fprintln(out, "\nLatest attempts:")
		return attemptsTable(out, attempts)
	}
	return nil
}

func eventTypes(w *agentv1.Webhook) string {
	if len(w.GetEventTypes()) == 0 {
		return "all"
	}
	return strings.Join(w.GetEventTypes(), ",")
}

func webhookState(w *agentv1.Webhook) string {
	switch w.GetState() {
	case agentv1.Webhook_STATE_ENABLED:
		return "enabled"
	case agentv1.Webhook_STATE_DISABLED:
		if r, _, _ := strings.Cut(w.GetDisabledReason(), ":"); r != "" {
			return "disabled (" + r + ")"
		}
		return "disabled"
	}
	return ""
}

func pendingText(d *agentv1.WebhookDeliveryStatus) string {
	if d.GetPendingEventId() == "" {
		return ""
	}
	s := fmt.Sprintf("event %s after %d attempts", d.GetPendingEventId(), d.GetPendingAttempts())
	if n := d.GetNextAttemptAt(); n != nil {
		s += ", next " + n.AsTime().Local().Format(time.DateTime)
	}
	return s
}

func attemptResult(a *agentv1.WebhookAttempt) string {
	r := a.GetError()
	if a.GetStatus() != 0 {
		r = "HTTP " + strconv.Itoa(int(a.GetStatus()))
	}
	if a.GetOk() {
		return "ok " + r
	}
	return "failed " + r
}

func attemptsTable(w io.Writer, list []*agentv1.WebhookAttempt) error {
	t := newTable(w, "TIME", "EVENT", "TYPE", "ATTEMPT", "RESULT", "LATENCY", "NEXT", "RESPONSE")
	for _, a := range list {
		n := strconv.Itoa(int(a.GetNumber()))
		if a.GetRedelivery() {
			n = "redelivery"
		}
		next := ""
		if a.GetNextAttemptAt() != nil {
			next = a.GetNextAttemptAt().AsTime().Local().Format(time.DateTime)
		}
		t.row(a.GetTime().AsTime().Local().Format(time.DateTime), a.GetEventId(), a.GetEventType(), n, attemptResult(a),
			a.GetLatency().AsDuration().Round(time.Millisecond).String(), next, clip(a.GetResponse(), 40))
	}
	return t.flush()
}

func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}
