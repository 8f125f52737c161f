package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func recordsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "records",
		Short: "Read the records the agent stored for a connection",
		Long: "Read the FHIR resources the agent stored for a connection (pulled from the source in the\n" +
			"background, or synced with Bulk Data). Resources are printed as the source sent them.",
	}
	cmd.AddCommand(recordsListCmd(g), recordsGetCmd(g), recordsSearchCmd(g))
	return cmd
}

// recordLine is one record in --json output: the resource is embedded as
// the source sent it.
type recordLine struct {
	ResourceType string          `json:"resource_type"`
	ID           string          `json:"id"`
	VersionID    string          `json:"version_id,omitempty"`
	LastUpdated  string          `json:"last_updated,omitempty"`
	Deleted      bool            `json:"deleted,omitempty"`
	Cursor       string          `json:"cursor"`
	Resource     json.RawMessage `json:"resource,omitempty"`
}

func lineOf(r *agentv1.Record) recordLine {
	l := recordLine{ResourceType: r.GetResourceType(), ID: r.GetId(), VersionID: r.GetVersionId(), Deleted: r.GetDeleted(), Cursor: r.GetCursor()}
	if r.GetLastUpdated() != nil {
		l.LastUpdated = r.GetLastUpdated().AsTime().Format(time.RFC3339Nano)
	}
	if !r.GetDeleted() && json.Valid(r.GetJson()) {
		l.Resource = r.GetJson()
	}
	return l
}

func recordsListCmd(g *globals) *cobra.Command {
	var types []string
	var since string
	var limit int64
	var ndjson bool
	cmd := &cobra.Command{
		Use:   "list CONNECTION",
		Short: "List a connection's records in change order, or those changed since a cursor",
		Long: "List a connection's stored records in the order they changed. The last line on stderr is\n" +
			"the cursor to continue from: pass it as --since to get only what changed afterwards.\n\n" +
			"Output: a table; --ndjson prints each resource as the source sent it, one per line (deleted\n" +
			"resources are left out); --json prints one object per line with the record's version,\n" +
			"cursor, deletion flag and the resource.",
		Example: "  medrelay records list conn_123 --type Observation,Condition --ndjson > obs.ndjson\n" +
			"  medrelay records list conn_123 --since 4711 --json",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ndjson && g.json {
				return errors.New("--json and --ndjson are different outputs: choose one")
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				req := &agentv1.ListRecordsRequest{ConnectionId: args[0], Types: splitList(types), SinceCursor: since, Limit: limit}
				st, err := c.Records.ListRecords(ctx, req)
				if err != nil {
					return err
				}
				out := newRecordOutput(cmd.OutOrStdout(), ndjson, g.json)
				cursor, n, deleted := since, 0, 0
				err = recvAll(st, func(m *agentv1.ListRecordsResponse) error {
					cursor = m.GetCursor()
					for _, r := range m.GetRecords() {
						n++
						if r.GetDeleted() {
							deleted++
						}
						if err := out.print(r); err != nil {
							return err
						}
					}
					return nil
				})
				errOut := cmd.ErrOrStderr()
				if err != nil {
					// The cursor of the last whole message is where a
					// later list can continue from.
					err = out.failed(err)
					if cursor != "" {
						fmt.Fprintf(errOut, "%d records received before the error; cursor: %s\n", n, cursor)
					}
					return err
				}
				if err := out.flush(); err != nil {
					return err
				}
				if ndjson && deleted > 0 {
					fmt.Fprintf(errOut, "%d deleted resources left out (see them with --json)\n", deleted)
				}
				if out.tbl != nil {
					fmt.Fprintf(errOut, "%d records\n", n)
				}
				fmt.Fprintf(errOut, "cursor: %s\n", cursor)
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&types, "type", nil, "only these resource types (repeat or comma-separate: Observation,Condition)")
	f.StringVar(&since, "since", "", "only records changed after this cursor (printed by the previous list)")
	f.Int64Var(&limit, "limit", 0, "at most this many records")
	f.BoolVar(&ndjson, "ndjson", false, "print the resources as NDJSON, as the source sent them")
	return cmd
}

// recordOutput prints records as they stream in, buffered: a table for
// people, NDJSON as the source sent them, or one JSON object per line.
type recordOutput struct {
	w            *bufio.Writer
	tbl          *table // nil unless the output is a table
	rows         int    // table rows printed
	ndjson, json bool
}

func newRecordOutput(w io.Writer, ndjson, asJSON bool) *recordOutput {
	o := &recordOutput{w: bufio.NewWriterSize(w, 256<<10), ndjson: ndjson, json: asJSON}
	if !ndjson && !asJSON {
		o.tbl = newTable(o.w, "TYPE", "ID", "VERSION", "LAST UPDATED", "STATE", "SIZE")
	}
	return o
}

// flush writes the table, if any, and everything buffered.
func (o *recordOutput) flush() error {
	if o.tbl != nil {
		if err := o.tbl.flush(); err != nil {
			return err
		}
	}
	return o.w.Flush()
}

// failed ends an output that a stream error cut short: what arrived is
// printed all the same (a table's rows wait in the tabwriter for their
// column widths, so flushing only the buffer would drop them), and the
// stream's error is returned for main to print after it.
func (o *recordOutput) failed(err error) error {
	if o.tbl != nil && o.rows == 0 {
		return err // a header alone says nothing
	}
	if ferr := o.flush(); ferr != nil {
		return errors.Join(err, ferr)
	}
	return err
}

func (o *recordOutput) print(r *agentv1.Record) error {
	switch {
	case o.ndjson:
		if r.GetDeleted() {
			return nil
		}
		if _, err := o.w.Write(oneLine(r.GetJson())); err != nil {
			return err
		}
		_, err := o.w.Write([]byte{'\n'})
		return err
	case o.json:
		b, err := json.Marshal(lineOf(r))
		if err != nil {
			return err
		}
		b = append(b, '\n')
		_, err = o.w.Write(b)
		return err
	}
	state, updated := "", ""
	if r.GetDeleted() {
		state = "deleted"
	}
	if r.GetLastUpdated() != nil {
		updated = r.GetLastUpdated().AsTime().Local().Format(time.DateTime)
	}
	size := ""
	if !r.GetDeleted() {
		size = bytesHuman(int64(len(r.GetJson())))
	}
	o.tbl.row(r.GetResourceType(), r.GetId(), r.GetVersionId(), updated, state, size)
	o.rows++
	return nil
}

// oneLine makes sure a resource takes one NDJSON line: sources send
// compact JSON, but a pretty-printed one must not break the format.
func oneLine(b []byte) []byte {
	if bytes.IndexByte(b, '\n') < 0 {
		return b
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return bytes.ReplaceAll(b, []byte{'\n'}, []byte{' '})
	}
	return buf.Bytes()
}

func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func recordsGetCmd(g *globals) *cobra.Command {
	var ndjson bool
	cmd := &cobra.Command{
		Use:   "get CONNECTION TYPE/ID",
		Short: "Print one stored resource",
		Long: "Print one stored resource as the source sent it (indented). --ndjson prints it on one line;\n" +
			"--json wraps it with its version, cursor and deletion flag.",
		Example: "  medrelay records get conn_123 Patient/example",
		Args:    cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			typ, id, err := parseRef(args[1:])
			if err != nil {
				return err
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Records.GetRecord(ctx, &agentv1.GetRecordRequest{ConnectionId: args[0], ResourceType: typ, Id: id})
				if err != nil {
					return err
				}
				r := resp.GetRecord()
				out := cmd.OutOrStdout()
				if g.json {
					b, err := json.MarshalIndent(lineOf(r), "", "  ")
					if err != nil {
						return err
					}
					_, err = fmt.Fprintln(out, string(b))
					return err
				}
				if r.GetDeleted() {
					return fmt.Errorf("%s/%s was deleted at the source (cursor %s)", typ, id, r.GetCursor())
				}
				if ndjson {
					_, err = fmt.Fprintln(out, string(oneLine(r.GetJson())))
					return err
				}
				var buf bytes.Buffer
				if err := json.Indent(&buf, r.GetJson(), "", "  "); err != nil {
					buf.Reset()
					buf.Write(r.GetJson())
				}
				_, err = fmt.Fprintln(out, buf.String())
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&ndjson, "ndjson", false, "print the resource on one line, as the source sent it")
	return cmd
}

// parseRef accepts "Type/id" or "Type id".
func parseRef(args []string) (string, string, error) {
	if len(args) == 2 {
		return args[0], args[1], nil
	}
	typ, id, ok := strings.Cut(args[0], "/")
	if !ok || typ == "" || id == "" {
		return "", "", fmt.Errorf("want TYPE/ID (e.g. Patient/example), got %s", strconv.Quote(args[0]))
	}
	return typ, id, nil
}
