package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/medrelay/medrelay/agent/client"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func credentialsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "credentials",
		Short: "Manage your own client registrations with sources and vendors (administrators)",
		Long: `A credential is your registration with a source's authorization server (or with every
source of a vendor): its client id and, for a confidential client, a client secret or a private key
that the agent generates and never lets out. Register the redirect URI and JWKS URL that
'medrelay credentials list' shows with the vendor.`,
	}
	cmd.AddCommand(credSetCmd(g), credListCmd(g), credDeleteCmd(g), credRotateCmd(g), credJWKSCmd(g))
	return cmd
}

// targetArgs reads SOURCE or --vendor (exactly one).
func targetArgs(args []string, vendor string) (sourceID string, err error) {
	switch {
	case len(args) == 1 && vendor != "":
		return "", errors.New("give a SOURCE or --vendor, not both")
	case len(args) == 1:
		return args[0], nil
	case vendor == "":
		return "", errors.New("give a SOURCE or --vendor V")
	}
	return "", nil
}

func credSetCmd(g *globals) *cobra.Command {
	var vendor, clientID, secretFile, genKey string
	var scopes []string
	var public, secretPost bool
	cmd := &cobra.Command{
		Use:   "set SOURCE|--vendor V --client-id ID [--client-secret-file F | --generate-key ES384|RS384] [--scopes S,...]",
		Short: "Create or update the credential of a source or of a vendor",
		Long: `Create or update the credential of one source (SOURCE) or of every source of a vendor
(--vendor). A source's own credential beats its vendor's.

  --client-secret-file F   a confidential client with a client secret, read from F ('-' is stdin);
                           the secret is never shown again
  --generate-key ES384     a confidential client with a private key generated inside the agent
                           (private_key_jwt); register the JWKS URL shown, or paste 'credentials jwks'
  --public                 a public client (no secret, no key)

Without any of these, an existing credential keeps its secret or key (e.g. to change --scopes).
Running --generate-key again rotates the key; the old one stays published until it cannot be
used any more.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sourceID, err := targetArgs(args, vendor)
			if err != nil {
				return err
			}
			n := 0
			for _, set := range []bool{secretFile != "", genKey != "", public} {
				if set {
					n++
				}
			}
			if n > 1 {
				return errors.New("use one of --client-secret-file, --generate-key and --public")
			}
			req := &agentv1.SetCredentialRequest{SourceId: sourceID, Vendor: vendor, ClientId: clientID}
			if secretFile != "" {
				secret, err := readSecret(cmd, secretFile)
				if err != nil {
					return err
				}
				req.ClientSecret = secret
			}
			switch strings.ToUpper(genKey) {
			case "":
			case "ES384":
				req.GenerateKey = agentv1.KeyAlgorithm_KEY_ALGORITHM_ES384
			case "RS384":
				req.GenerateKey = agentv1.KeyAlgorithm_KEY_ALGORITHM_RS384
			default:
				return fmt.Errorf("--generate-key %q: want ES384 or RS384", genKey)
			}
			switch {
			case public:
				req.AuthMethod = agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE
			case secretPost:
				req.AuthMethod = agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST
			}
			if cmd.Flags().Changed("scopes") {
				req.Scopes, req.ReplaceScopes = splitScopes(scopes), true
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Credentials.SetCredential(ctx, req)
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					cr := resp.GetCredential()
					fmt.Fprintf(out, "Credential %s for %s: client %s, %s.\n", cr.GetId(), credTarget(cr), cr.GetClientId(), methodText(cr))
					fmt.Fprintf(out, "\nRegister with the vendor:\n  redirect URI  %s\n", resp.GetRegistration().GetRedirectUri())
					if cr.GetAuthMethod() == agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_PRIVATE_KEY_JWT {
						fmt.Fprintf(out, "  JWKS URL      %s\n", resp.GetRegistration().GetJwksUrl())
						fmt.Fprintf(out, "  (or paste the key set printed by `medrelay credentials jwks`)\n")
					}
					return nil
				})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&vendor, "vendor", "", "the vendor whose every source uses this credential (e.g. epic)")
	f.StringVar(&clientID, "client-id", "", "the client id the vendor gave you (required)")
	f.StringVar(&secretFile, "client-secret-file", "", "read the client secret from this file ('-' for stdin)")
	f.StringVar(&genKey, "generate-key", "", "generate a private key in the agent: ES384 or RS384")
	f.BoolVar(&public, "public", false, "a public client: no secret, no key")
	f.BoolVar(&secretPost, "client-secret-post", false, "send the client secret in the form body instead of HTTP Basic")
	f.StringSliceVar(&scopes, "scopes", nil, "scopes to request with this credential (comma or space separated; empty clears)")
	_ = cmd.MarkFlagRequired("client-id")
	return cmd
}

// readSecret reads a secret from a file or stdin, without its final newline.
func readSecret(cmd *cobra.Command, path string) (string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 8<<10))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("client secret: %w", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", errors.New("client secret: the file is empty")
	}
	return s, nil
}

func splitScopes(in []string) []string {
	out := []string{}
	for _, s := range in {
		out = append(out, strings.Fields(s)...)
	}
	return out
}

func credTarget(c *agentv1.Credential) string {
	if c.GetSourceId() != "" {
		return "source " + c.GetSourceId()
	}
	return "vendor " + c.GetVendor()
}

func methodText(c *agentv1.Credential) string {
	switch c.GetAuthMethod() {
	case agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE:
		return "public client"
	case agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC:
		return "client secret (HTTP Basic)"
	case agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST:
		return "client secret (form)"
	case agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_PRIVATE_KEY_JWT:
		alg := strings.TrimPrefix(c.GetKeyAlgorithm().String(), "KEY_ALGORITHM_")
		return "private key " + alg + " (private_key_jwt)"
	}
	return "unknown method"
}

func methodShort(c *agentv1.Credential) string {
	switch c.GetAuthMethod() {
	case agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE:
		return "public"
	case agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC:
		return "secret"
	case agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST:
		return "secret (post)"
	case agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_PRIVATE_KEY_JWT:
		return "key " + strings.TrimPrefix(c.GetKeyAlgorithm().String(), "KEY_ALGORITHM_")
	}
	return ""
}

func credListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List credentials, and the redirect URI and JWKS URL to register with vendors",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Credentials.ListCredentials(ctx, &agentv1.ListCredentialsRequest{})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error { return printCredentials(out, resp) })
			})
		},
	}
}

func printCredentials(out io.Writer, resp *agentv1.ListCredentialsResponse) error {
	if len(resp.GetCredentials()) == 0 {
		fmt.Fprintln(out, "No credentials yet. Add one with `medrelay credentials set SOURCE|--vendor V --client-id ID ...`.")
	} else {
		t := newTable(out, "ID", "FOR", "CLIENT ID", "AUTH", "KEY", "SCOPES", "UPDATED")
		for _, cr := range resp.GetCredentials() {
			key := ""
			if len(cr.GetKeyIds()) > 0 {
				key = cr.GetKeyIds()[0]
				if len(key) > 12 {
					key = key[:12] + "…"
				}
				if n := len(cr.GetKeyIds()) - 1; n > 0 {
					key += fmt.Sprintf(" (+%d retiring)", n)
				}
			}
			t.row(cr.GetId(), credTarget(cr), cr.GetClientId(), methodShort(cr), key, strings.Join(cr.GetScopes(), " "), ago(cr.GetUpdatedAt()))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "\nRedirect URI to register with each vendor:  %s\n", resp.GetRegistration().GetRedirectUri())
	fmt.Fprintf(out, "JWKS URL (for private_key_jwt):             %s\n", resp.GetRegistration().GetJwksUrl())
	return nil
}

// credRef builds the id/source/vendor reference of delete and rotate: an
// argument starting with "cred_" is a credential id, any other a source.
func credRef(args []string, vendor string) (id, sourceID string, err error) {
	src, err := targetArgs(args, vendor)
	if err != nil {
		return "", "", err
	}
	if strings.HasPrefix(src, "cred_") {
		return src, "", nil
	}
	return "", src, nil
}

func credDeleteCmd(g *globals) *cobra.Command {
	var vendor string
	cmd := &cobra.Command{
		Use:   "delete ID|SOURCE|--vendor V",
		Short: "Delete a credential (its key stays published until it cannot be used any more)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, src, err := credRef(args, vendor)
			if err != nil {
				return err
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Credentials.DeleteCredential(ctx, &agentv1.DeleteCredentialRequest{Id: id, SourceId: src, Vendor: vendor})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					fmt.Fprintf(out, "Deleted credential %s for %s.\n", resp.GetCredential().GetId(), credTarget(resp.GetCredential()))
					return nil
				})
			})
		},
	}
	cmd.Flags().StringVar(&vendor, "vendor", "", "delete the vendor's credential")
	return cmd
}

func credRotateCmd(g *globals) *cobra.Command {
	var vendor string
	cmd := &cobra.Command{
		Use:   "rotate ID|SOURCE|--vendor V",
		Short: "Replace a credential's private key with a new one",
		Long: `Generate a new private key for a credential that authenticates with one. The new key signs
from now on; the old one stays in the JWKS until the last assertion it signed has expired. Vendors
that fetch the JWKS URL pick the new key up by themselves; where you pasted the key set instead,
paste the new one (medrelay credentials jwks) before rotating.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, src, err := credRef(args, vendor)
			if err != nil {
				return err
			}
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Credentials.RotateCredentialKey(ctx, &agentv1.RotateCredentialKeyRequest{Id: id, SourceId: src, Vendor: vendor})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					cr := resp.GetCredential()
					if len(cr.GetKeyIds()) == 0 {
						return fmt.Errorf("the agent rotated the key of %s but named no key in its answer", cr.GetId())
					}
					fmt.Fprintf(out, "Rotated the key of %s (%s): now signing with %s.\n", cr.GetId(), credTarget(cr), cr.GetKeyIds()[0])
					return nil
				})
			})
		},
	}
	cmd.Flags().StringVar(&vendor, "vendor", "", "rotate the vendor's credential")
	return cmd
}

func credJWKSCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "jwks",
		Short: "Print the public key set (JWKS) to register with vendors that take it pasted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Credentials.GetJWKS(ctx, &agentv1.GetJWKSRequest{})
				if err != nil {
					return err
				}
				return g.printResult(cmd, resp, func(out io.Writer) error {
					var buf bytes.Buffer
					if err := json.Indent(&buf, []byte(resp.GetJwks()), "", "  "); err != nil {
						return fmt.Errorf("the agent sent a key set that is not JSON: %w", err)
					}
					fmt.Fprintln(out, buf.String())
					fmt.Fprintf(cmd.ErrOrStderr(), "Served at %s\n", resp.GetJwksUrl())
					return nil
				})
			})
		},
	}
}
