package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func sourcesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "sources", Short: "Search the directory of sources, show one, import lists, discover endpoints"}
	cmd.AddCommand(sourcesSearchCmd(g), sourcesShowCmd(g), sourcesImportCmd(g), sourcesDiscoverCmd(g))
	return cmd
}

func sourcesSearchCmd(g *globals) *cobra.Command {
	var (
		vendor, kind, state, zip string
		limit                    int
		active                   bool
		page                     string
	)
	c := &cobra.Command{
		Use:   "search [QUERY]",
		Short: "Search sources by name, alias, portal or city (typos and abbreviations welcome)",
		Example: `  medrelay sources search "childrens mercy kansas"
  medrelay sources search "st marys med ctr" --state WI
  medrelay sources search --vendor epic --kind ehr --limit 50`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := ""
			if len(args) == 1 {
				q = args[0]
			}
			return g.withClient(cmd, func(ctx context.Context, cl *client.Client) error {
				resp, err := cl.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{
					Query: q, Vendor: vendor, Kind: kind, State: state, PostalCodePrefix: zip,
					ExcludeSuspended: active, PageSize: int32(limit), PageToken: page,
				})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					if len(resp.GetResults()) == 0 {
						fmt.Fprintln(out, "No sources found.")
						return nil
					}
					t := newTable(out, "NAME", "VENDOR", "KIND", "WHERE", "STATUS", "ID")
					for _, r := range resp.GetResults() {
						s := r.GetSource()
						t.row(s.GetName(), s.GetVendor(), kindName(s.GetKind()), where(s), statusName(s.GetStatus()), s.GetId())
					}
					if err := t.flush(); err != nil {
						return err
					}
					if next := resp.GetNextPageToken(); next != "" {
						fmt.Fprintf(out, "\nMore results: add --page %s\n", next)
					}
					return nil
				})
			})
		},
	}
	f := c.Flags()
	f.StringVar(&vendor, "vendor", "", "only this vendor (epic, oraclehealth, athenahealth, eclinicalworks, bluebutton, ...)")
	f.StringVar(&kind, "kind", "", "only this kind (ehr, payer, network, lab, pharmacy, imaging)")
	f.StringVar(&state, "state", "", "only sources in this state (two-letter code)")
	f.StringVar(&zip, "zip", "", "only sources whose postal code starts with this")
	f.IntVar(&limit, "limit", 20, "results per page (at most 200)")
	f.BoolVar(&active, "active", false, "leave out suspended sources")
	f.StringVar(&page, "page", "", "continue from a previous page")
	return c
}

func sourcesShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a source: endpoints, portals, locations, setup requirements, discovery",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *client.Client) error {
				resp, err := cl.Directory.Get(ctx, &agentv1.DirectoryServiceGetRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					printSource(out, resp.GetSource())
					return nil
				})
			})
		},
	}
}

func sourcesDiscoverCmd(g *globals) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "discover ID",
		Short: "Fetch the source's .well-known/smart-configuration and metadata",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(cmd, func(ctx context.Context, cl *client.Client) error {
				resp, err := cl.Directory.Discover(ctx, &agentv1.DirectoryServiceDiscoverRequest{Id: args[0], Force: force})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					s := resp.GetSource()
					fmt.Fprintf(out, "%s (%s)\n", s.GetName(), s.GetId())
					for _, ep := range s.GetEndpoints() {
						printDiscovery(out, ep)
					}
					return nil
				})
			})
		},
	}
	c.Flags().BoolVar(&force, "force", false, "fetch again even if the kept results have not expired")
	return c
}

func sourcesImportCmd(g *globals) *cobra.Command {
	var (
		listID, format string
		dryRun         bool
		allRejected    bool
	)
	c := &cobra.Command{
		Use:   "import FILE|URL",
		Short: "Import a published list of sources (administrators)",
		Long: `Import a list of sources: a SMART 2.2 User-access Brands bundle, a FHIR Bundle of
Endpoints and Organizations (Epic, Oracle Health), Cerner's older JSON list, an ONC Lantern
list, or a CSV list (payers, state Medicaid, the CMS SMA directory, also as .xlsx). The format
is detected. A FILE is read here and sent to the agent; a URL (https) is fetched by the agent.
Importing a newer copy of the same list (same --list-id, by default the URL or the file's
name) updates it; sources no longer in it become suspended.`,
		Example: `  medrelay sources import athenahealth_Inc_EndpointSources.json
  medrelay sources import https://open.epic.com/Endpoints/R4 --list-id epic-r4`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			start := &agentv1.ImportStart{ListId: listID, Format: format, DryRun: dryRun}
			var file *os.File
			if u, err := url.Parse(args[0]); err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" {
				start.Url = args[0]
			} else {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				st, err := f.Stat()
				if err != nil {
					return err
				}
				if st.IsDir() {
					return fmt.Errorf("%s is a directory: import its files one by one", args[0])
				}
				file = f
				start.FileName = filepath.Base(args[0])
				start.Size = st.Size()
			}
			return g.withClient(cmd, func(ctx context.Context, cl *client.Client) error {
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				stream, err := cl.Directory.Import(ctx)
				if err != nil {
					return err
				}
				sendErr := make(chan error, 1)
				// io.EOF from Send means the agent already ended the call (a
				// refusal, say): its status comes from Recv below.
				if err := stream.Send(&agentv1.DirectoryServiceImportRequest{Part: &agentv1.DirectoryServiceImportRequest_Start{Start: start}}); err != nil && !errors.Is(err, io.EOF) {
					return err
				} else if err != nil {
					sendErr <- nil
				} else {
					go func() {
						sendErr <- sendFile(stream, file)
					}()
				}
				pr := newProgress(cmd.ErrOrStderr())
				var sum *agentv1.ImportSummary
				err = recvAll(stream, func(resp *agentv1.DirectoryServiceImportResponse) error {
					if p := resp.GetProgress(); p != nil {
						pr.update(p)
					}
					if s := resp.GetSummary(); s != nil {
						sum = s
					}
					return nil
				})
				pr.done()
				if err != nil {
					return err
				}
				if err := <-sendErr; err != nil {
					return err
				}
				if sum == nil {
					return errors.New("the agent ended the import without a summary")
				}
				return g.printResult(cmd, sum, func(out io.Writer) error {
					printSummary(out, sum, allRejected)
					return nil
				})
			})
		},
	}
	f := c.Flags()
	f.StringVar(&listID, "list-id", "", "name of the list (default: the URL, or file: and the file name)")
	f.StringVar(&format, "format", "", "force a format instead of detecting it")
	f.BoolVar(&dryRun, "dry-run", false, "read and report without changing the directory")
	f.BoolVar(&allRejected, "all-rejected", false, "print every rejected row, not only the first 20")
	return c
}

// sendFile streams the file in 1 MiB chunks and closes the sending side.
func sendFile(stream agentv1.DirectoryService_ImportClient, f *os.File) error {
	if f != nil {
		buf := make([]byte, 1<<20)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				if serr := stream.Send(&agentv1.DirectoryServiceImportRequest{Part: &agentv1.DirectoryServiceImportRequest_Chunk{Chunk: buf[:n]}}); serr != nil {
					// The agent ended the stream; its reason comes from Recv.
					return nil
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
		}
	}
	return stream.CloseSend()
}

// progress shows an import's phases: a bar on a terminal, a line per phase
// and every few seconds otherwise (logs, CI).
type progress struct {
	w     io.Writer
	tty   bool
	phase string
	bar   *progressbar.ProgressBar
	last  time.Time
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

var phaseNames = map[string]string{
	"receive": "uploading", "fetch": "downloading", "parse": "reading rows", "merge": "merging",
	"write": "writing", "index": "indexing",
}

func (p *progress) update(u *agentv1.ImportProgress) {
	name := phaseNames[u.GetPhase()]
	if name == "" {
		name = u.GetPhase()
	}
	bytes := u.GetPhase() == "receive" || u.GetPhase() == "fetch"
	if u.GetPhase() != p.phase {
		p.finishBar()
		p.phase = u.GetPhase()
		if p.tty {
			total := u.GetTotal()
			if total <= 0 {
				total = -1
			}
			opts := []progressbar.Option{
				progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription(fmt.Sprintf("%-13s", name)),
				progressbar.OptionShowCount(), progressbar.OptionThrottle(80 * time.Millisecond),
				progressbar.OptionSetWidth(30), progressbar.OptionShowElapsedTimeOnFinish(),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.w) }),
			}
			if bytes {
				opts = append(opts, progressbar.OptionShowBytes(true))
			}
			p.bar = progressbar.NewOptions64(total, opts...)
		} else {
			fmt.Fprintf(p.w, "%s…\n", name)
			p.last = time.Now()
		}
	}
	if p.bar != nil {
		_ = p.bar.Set64(u.GetDone())
		return
	}
	if time.Since(p.last) >= 2*time.Second {
		p.last = time.Now()
		if u.GetTotal() > 0 {
			fmt.Fprintf(p.w, "%s: %d of %d\n", name, u.GetDone(), u.GetTotal())
		} else {
			fmt.Fprintf(p.w, "%s: %d\n", name, u.GetDone())
		}
	}
}

func (p *progress) finishBar() {
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}

func (p *progress) done() { p.finishBar() }

func printSummary(w io.Writer, s *agentv1.ImportSummary, allRejected bool) {
	if s.GetNotModified() {
		fmt.Fprintf(w, "%s has not changed since it was last imported (ETag): nothing to do.\n", s.GetListId())
		return
	}
	verb := "Imported"
	if s.GetDryRun() {
		verb = "Read (dry run, nothing changed)"
	}
	fmt.Fprintf(w, "%s %s (%s): %d rows in %s\n", verb, s.GetListId(), s.GetFormat(), s.GetRows(), s.GetDuration().AsDuration().Round(time.Millisecond))
	sources := s.GetCreated() + s.GetUpdated() + s.GetUnchanged()
	fmt.Fprintf(w, "  sources:    %d (%d new, %d updated, %d unchanged", sources, s.GetCreated(), s.GetUpdated(), s.GetUnchanged())
	if s.GetReactivated() > 0 {
		fmt.Fprintf(w, ", %d active again", s.GetReactivated())
	}
	fmt.Fprintln(w, ")")
	if s.GetDuplicates() > 0 {
		fmt.Fprintf(w, "  duplicates: %d rows described a source already in the list\n", s.GetDuplicates())
	}
	if s.GetSuspended() > 0 {
		fmt.Fprintf(w, "  suspended:  %d sources are no longer in this list\n", s.GetSuspended())
	}
	if s.GetEndpoints() > 0 {
		fmt.Fprintf(w, "  endpoints:  %d\n", s.GetEndpoints())
	}
	if len(s.GetByVendor()) > 0 {
		fmt.Fprintf(w, "  by vendor:  %s\n", countList(s.GetByVendor()))
	}
	if len(s.GetByKind()) > 0 {
		fmt.Fprintf(w, "  by kind:    %s\n", countList(s.GetByKind()))
	}
	if len(s.GetSetups()) > 0 {
		fmt.Fprintf(w, "  setup requirements for: %s\n", strings.Join(s.GetSetups(), ", "))
	}
	if s.GetSkipped() > 0 {
		fmt.Fprintf(w, "  skipped:    %d\n", s.GetSkipped())
	}
	fmt.Fprintf(w, "  rejected:   %d\n", s.GetRejectedCount())
	for _, n := range s.GetNotes() {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	rej := s.GetRejected()
	if len(rej) > 0 {
		fmt.Fprintln(w, "\nRejected rows:")
		n := len(rej)
		if !allRejected && n > 20 {
			n = 20
		}
		for _, r := range rej[:n] {
			name := r.GetName()
			if name == "" {
				name = r.GetRef()
			}
			if name != "" {
				name += ": "
			}
			fmt.Fprintf(w, "  row %d: %s%s\n", r.GetRow(), name, r.GetReason())
		}
		if n < len(rej) || int64(len(rej)) < s.GetRejectedCount() {
			fmt.Fprintf(w, "  … %d more (--all-rejected, or --json)\n", s.GetRejectedCount()-int64(n))
		}
	}
}

func countList(m map[string]int64) string {
	type kv struct {
		k string
		v int64
	}
	var l []kv
	for k, v := range m {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool {
		if l[i].v != l[j].v {
			return l[i].v > l[j].v
		}
		return l[i].k < l[j].k
	})
	var parts []string
	for _, x := range l {
		parts = append(parts, fmt.Sprintf("%s %d", x.k, x.v))
	}
	return strings.Join(parts, ", ")
}

func kindName(k agentv1.SourceKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "SOURCE_KIND_"))
}

func statusName(s agentv1.SourceStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SOURCE_STATUS_"))
}

func where(s *agentv1.Source) string {
	for _, l := range s.GetLocations() {
		switch {
		case l.GetCity() != "" && l.GetState() != "":
			return l.GetCity() + ", " + l.GetState()
		case l.GetState() != "":
			return l.GetState()
		case l.GetCity() != "":
			return l.GetCity()
		}
	}
	return ""
}

func printSource(w io.Writer, s *agentv1.Source) {
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-14s %s\n", k+":", v)
		}
	}
	kv("Name", s.GetName())
	kv("ID", s.GetId())
	if len(s.GetAliases()) > 0 {
		kv("Also known as", strings.Join(s.GetAliases(), "; "))
	}
	kv("Vendor", strings.TrimSpace(s.GetVendorName()+" ("+s.GetVendor()+")"))
	kv("Kind", kindName(s.GetKind()))
	st := statusName(s.GetStatus())
	if s.GetSandbox() {
		st += " (sandbox)"
	}
	kv("Status", st)
	if logo := s.GetLogo(); logo != "" {
		if strings.HasPrefix(logo, "data:") {
			logo = fmt.Sprintf("(embedded image, %d bytes)", len(logo))
		}
		kv("Logo", logo)
	}
	kv("Website", s.GetIdentifiers().GetWebsite())
	if npi := s.GetIdentifiers().GetNpi(); len(npi) > 0 {
		kv("NPI", strings.Join(npi, ", "))
	}
	for i, l := range s.GetLocations() {
		if i == 5 {
			kv("", fmt.Sprintf("… and %d more locations", len(s.GetLocations())-5))
			break
		}
		parts := []string{}
		for _, p := range []string{l.GetLine(), l.GetCity(), strings.TrimSpace(l.GetState() + " " + l.GetPostalCode())} {
			if p != "" {
				parts = append(parts, p)
			}
		}
		label := ""
		if i == 0 {
			label = "Location"
		}
		fmt.Fprintf(w, "%-14s %s\n", label+map[bool]string{true: ":", false: ""}[label != ""], strings.Join(parts, ", "))
	}
	for _, p := range s.GetPortals() {
		kv("Portal", strings.TrimSpace(p.GetName()+" "+p.GetUrl()))
	}
	kv("Lists", strings.Join(s.GetLists(), ", "))
	kv("Origin", s.GetOrigin())
	fmt.Fprintln(w, "\nEndpoints:")
	for _, ep := range s.GetEndpoints() {
		printDiscovery(w, ep)
	}
	if su := s.GetSetup(); su != nil {
		fmt.Fprintf(w, "\nSetup requirements (from %s):\n", su.GetFrom())
		if len(su.GetClientAuthMethods()) > 0 {
			fmt.Fprintf(w, "  client authentication: %s\n", strings.Join(su.GetClientAuthMethods(), ", "))
		}
		pk := strings.Join(su.GetPkceMethods(), ", ")
		if su.GetPkceRequired() {
			pk += " (required)"
		}
		if pk != "" {
			fmt.Fprintf(w, "  PKCE: %s\n", pk)
		}
		if su.GetConfidentialRequired() {
			fmt.Fprintln(w, "  confidential client required")
		}
		if su.GetDynamicRegistration() {
			fmt.Fprintln(w, "  dynamic client registration supported")
		}
		if len(su.GetScopes()) > 0 {
			fmt.Fprintf(w, "  scopes: %s\n", strings.Join(su.GetScopes(), " "))
		}
		if su.GetRegistrationUrl() != "" {
			fmt.Fprintf(w, "  register at: %s\n", su.GetRegistrationUrl())
		}
		if su.GetDocumentation() != "" {
			fmt.Fprintf(w, "  documentation: %s\n", strings.ReplaceAll(strings.TrimSpace(su.GetDocumentation()), "\n", " "))
		}
		for _, n := range strings.Split(su.GetNotes(), "\n") {
			if n = strings.TrimSpace(n); n != "" {
				fmt.Fprintf(w, "  note: %s\n", n)
			}
		}
	}
}

func printDiscovery(w io.Writer, ep *agentv1.Endpoint) {
	meta := []string{}
	if v := ep.GetFhirVersion(); v != "" {
		meta = append(meta, "FHIR "+v)
	}
	if a := ep.GetAudience(); a != "" {
		meta = append(meta, a)
	}
	fmt.Fprintf(w, "  %s", ep.GetUrl())
	if len(meta) > 0 {
		fmt.Fprintf(w, " (%s)", strings.Join(meta, ", "))
	}
	fmt.Fprintln(w)
	d := ep.GetDiscovery()
	if d == nil {
		fmt.Fprintln(w, "    not discovered yet (medrelay sources discover ID)")
		return
	}
	fmt.Fprintf(w, "    discovery: %s, %s, valid until %s\n", d.GetStatus(), ago(d.GetFetchedAt()), d.GetExpiresAt().AsTime().Local().Format(time.DateTime))
	if sc := d.GetSmart(); sc != nil {
		if sc.GetAuthorizationEndpoint() != "" {
			fmt.Fprintf(w, "    authorize:  %s\n", sc.GetAuthorizationEndpoint())
		}
		fmt.Fprintf(w, "    token:      %s\n", sc.GetTokenEndpoint())
		if len(sc.GetCapabilities()) > 0 {
			fmt.Fprintf(w, "    capabilities: %s\n", strings.Join(sc.GetCapabilities(), " "))
		}
	}
	if c := d.GetCapability(); c != nil {
		sw := strings.TrimSpace(c.GetSoftware() + " " + c.GetSoftwareVersion())
		fmt.Fprintf(w, "    metadata:   FHIR %s%s, %d resource types\n", c.GetFhirVersion(), map[bool]string{true: ", " + sw, false: ""}[sw != ""], len(c.GetResources()))
	}
	for _, p := range d.GetProblems() {
		fmt.Fprintf(w, "    problem: %s\n", p)
	}
}
