package sdk

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Bundle is the part of a FHIR Bundle the SDK reads: entries stay raw.
type Bundle struct {
	ResourceType string        `json:"resourceType"`
	Type         string        `json:"type"`
	Total        *int64        `json:"total"`
	Link         []BundleLink  `json:"link"`
	Entry        []BundleEntry `json:"entry"`
}

// BundleLink is Bundle.link.
type BundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// BundleEntry is Bundle.entry with the resource left as bytes.
type BundleEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Search   *struct {
		Mode string `json:"mode"`
	} `json:"search"`
}

// ParseBundle reads a searchset (or any) Bundle.
func ParseBundle(b []byte) (*Bundle, error) {
	var bd Bundle
	if err := json.Unmarshal(b, &bd); err != nil {
		return nil, fmt.Errorf("%w: bundle: %v", ErrBadResponse, err)
	}
	if bd.ResourceType != "Bundle" {
		return nil, fmt.Errorf("%w: expected a Bundle, got resourceType %q", ErrBadResponse, clip(bd.ResourceType, 40))
	}
	return &bd, nil
}

// Next is the URL of the next page, or "".
func (b *Bundle) Next() string {
	for _, l := range b.Link {
		if l.Relation == "next" {
			return l.URL
		}
	}
	return ""
}

// Resources turns the entries into Resources (entries without a resource
// are skipped).
func (b *Bundle) Resources() ([]Resource, error) {
	out := make([]Resource, 0, len(b.Entry))
	for i, e := range b.Entry {
		if len(e.Resource) == 0 || bytes.Equal(e.Resource, []byte("null")) {
			continue
		}
		r, err := ParseResource(e.Resource)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if e.Search != nil {
			r.SearchMode = e.Search.Mode
		}
		out = append(out, r)
	}
	return out, nil
}

// ParseResource reads a resource's type and id, keeping its bytes as they
// are.
func ParseResource(b []byte) (Resource, error) {
	var head struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return Resource{}, fmt.Errorf("%w: resource: %v", ErrBadResponse, err)
	}
	if head.ResourceType == "" {
		return Resource{}, fmt.Errorf("%w: resource without resourceType", ErrBadResponse)
	}
	return Resource{Type: head.ResourceType, ID: head.ID, JSON: b}, nil
}

// Diagnostics pulls a short human-readable reason out of an error body: an
// OperationOutcome's issues, an OAuth error, or the start of plain text.
func Diagnostics(body []byte) string {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return ""
	}
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Severity    string `json:"severity"`
			Code        string `json:"code"`
			Diagnostics string `json:"diagnostics"`
			Details     struct {
				Text string `json:"text"`
			} `json:"details"`
		} `json:"issue"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	if body[0] == '{' && json.Unmarshal(body, &oo) == nil {
		if oo.ResourceType == "OperationOutcome" {
			var parts []string
			for _, is := range oo.Issue {
				msg := is.Diagnostics
				if msg == "" {
					msg = is.Details.Text
				}
				if msg == "" {
					msg = is.Code
				}
				parts = append(parts, msg)
			}
			return clip(strings.Join(parts, "; "), 300)
		}
		if oo.Error != "" {
			return clip(strings.TrimSpace(oo.Error+" "+oo.ErrorDescription), 300)
		}
	}
	if body[0] == '<' {
		return "" // an HTML error page says nothing useful
	}
	return clip(string(body), 200)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) && len(s) > 0 {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// References lists the relative literal references ("Type/id") in a
// resource, each once, in order of appearance. Absolute, contained (#x) and
// conditional (Type?x=y) references are left out.
func References(resource []byte) []string {
	var v any
	if err := json.Unmarshal(resource, &v); err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	var walk func(any, int)
	walk = func(x any, depth int) {
		if depth > 64 {
			return
		}
		switch t := x.(type) {
		case map[string]any:
			if ref, ok := t["reference"].(string); ok {
				if r, ok := relativeRef(ref); ok && !seen[r] {
					seen[r] = true
					out = append(out, r)
				}
			}
			for k, vv := range t {
				if k == "contained" {
					continue
				}
				walk(vv, depth+1)
			}
		case []any:
			for _, vv := range t {
				walk(vv, depth+1)
			}
		}
	}
	walk(v, 0)
	return out
}

// relativeRef accepts "Type/id" and "Type/id/_history/v" (versions dropped).
func relativeRef(ref string) (string, bool) {
	if ref == "" || strings.Contains(ref, "://") || strings.HasPrefix(ref, "#") || strings.ContainsAny(ref, "?") {
		return "", false
	}
	parts := strings.Split(ref, "/")
	if len(parts) != 2 && !(len(parts) == 4 && parts[2] == "_history") {
		return "", false
	}
	// The same rules as Read's: a reference Read would refuse (a type
	// over 64 letters) must not fail the whole call that follows it.
	typ, id := parts[0], parts[1]
	if !validType(typ) || !validID(id) {
		return "", false
	}
	return typ + "/" + id, true
}
