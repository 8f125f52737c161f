// Command medrelay is the command-line client of the medrelay agent. It is a
// client of agent/client and nothing more: it never opens the store.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/medrelay/medrelay/agent/client"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "medrelay:", explain(err))
		os.Exit(exitCode(err))
	}
}

// globals are the flags every command takes.
type globals struct {
	home     string
	socket   string
	appToken string
	json     bool
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "medrelay",
		Short:         "Talk to the medrelay agent",
		Long:          "medrelay talks to a running medrelay agent (medrelayd) over its local socket.",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.home, "home", "", "talk to the agent started with --home DIR (its socket is DIR/medrelay.sock)")
	pf.StringVar(&g.socket, "socket", "", "agent socket (default $MEDRELAY_SOCKET or "+client.DefaultSocket+")")
	pf.StringVar(&g.appToken, "app-token", "", "act as the app with this token instead of as an administrator (default $MEDRELAY_APP_TOKEN)")
	pf.BoolVar(&g.json, "json", false, "print JSON for scripts instead of tables")
	root.AddCommand(statusCmd(g), appsCmd(g), auditCmd(g))
	root.AddCommand(connectCmd(g), connectionsCmd(g))
	root.AddCommand(credentialsCmd(g))
	root.AddCommand(syncCmd(g))
	root.AddCommand(recordsCmd(g))
	root.AddCommand(pluginsCmd(g))
	root.AddCommand(sourcesCmd(g))
	root.AddCommand(eventsCmd(g), webhooksCmd(g))
	return root
}

// dial connects as the flags say.
func (g *globals) dial(ctx context.Context) (*client.Client, error) {
	var opts []client.Option
	switch {
	case g.socket != "":
		opts = append(opts, client.WithSocket(g.socket))
	case g.home != "":
		opts = append(opts, client.WithSocket(client.HomeSocket(g.home)))
	}
	if g.appToken != "" {
		opts = append(opts, client.WithAppToken(g.appToken))
	}
	return client.Dial(ctx, opts...)
}

// withClient dials the agent as the flags say, runs fn with the command's
// context and closes the connection. Errors come back unchanged: main
// explains them and picks the exit code.
func (g *globals) withClient(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	ctx := cmd.Context()
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(ctx, c)
}

// printResult prints an answer: the message as JSON with --json, else what
// human writes to the command's output for people.
func (g *globals) printResult(cmd *cobra.Command, m proto.Message, human func(out io.Writer) error) error {
	if g.json {
		return printJSON(cmd, m)
	}
	return human(cmd.OutOrStdout())
}

// recvAll hands every message of a server stream to each, until the stream
// ends (nil), fails, or each fails (that error).
func recvAll[T any](st interface{ Recv() (*T, error) }, each func(*T) error) error {
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := each(m); err != nil {
			return err
		}
	}
}

// printJSON writes a proto message as JSON with the proto field names.
func printJSON(cmd *cobra.Command, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true, EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
	return err
}

// explain turns an error into one line a person can act on.
func explain(err error) string {
	switch {
	case errors.Is(err, client.ErrAgentNotRunning):
		return err.Error() + "\n  Start it with `make run` (development), `medrelayd run --home DIR`, or `sudo systemctl start medrelayd`; pass --home or --socket if it runs elsewhere."
	case errors.Is(err, client.ErrPermissionDenied):
		return err.Error()
	}
	if e, ok := client.AsError(err); ok && e.Reason != "" {
		return fmt.Sprintf("%s [%s]", e.Message, e.Reason)
	}
	return err.Error()
}

// Exit codes: 1 for errors, 2 when the agent is not running, 3 when refused.
func exitCode(err error) int {
	switch {
	case errors.Is(err, client.ErrAgentNotRunning):
		return 2
	case errors.Is(err, client.ErrPermissionDenied), errors.Is(err, client.ErrUnauthenticated):
		return 3
	}
	return 1
}

// printJSONLine writes a proto message as one line of JSON (streams).
func printJSONLine(cmd *cobra.Command, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
	return err
}
