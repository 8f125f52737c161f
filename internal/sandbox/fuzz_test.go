package sandbox

import (
	"net/url"
	"strings"
	"testing"

	"github.com/medrelay/medrelay/internal/sandbox/synth"
)

// Fuzz targets for every parser of outside input. Run one for a few seconds:
// go test ./internal/sandbox -run '^$' -fuzz FuzzParseAssertion -fuzztime 5s

func FuzzParseAssertion(f *testing.F) {
	f.Add("eyJhbGciOiJFUzM4NCIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJhIiwic3ViIjoiYSIsImF1ZCI6Imh0dHA6Ly94IiwiZXhwIjoxLCJqdGkiOiJqIn0.c2ln")
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJhIn0.")
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		obj, c, err := parseAssertion(tok)
		if err == nil && (obj == nil || c == nil || len(obj.Signatures) != 1) {
			t.Fatal("nil result without error")
		}
		if err == nil {
			_ = c.audiences()
			if a := obj.Signatures[0].Header.Algorithm; a != "RS384" && a != "ES384" {
				t.Fatalf("accepted alg %q", a)
			}
		}
	})
}

func FuzzParseFaultsBody(f *testing.F) {
	f.Add([]byte(`{"tenant":"generic","endpoints":["token"],"status":503,"count":2,"retry_after":3}`))
	f.Add([]byte(`[{"refuse_refresh":true},{"client":"app","access_token_lifetime":5}]`))
	f.Add([]byte(`{"status":99}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := ParseFaultsBody(b)
		if err != nil {
			return
		}
		for _, fl := range list {
			if fl.Status != 0 && (fl.Status < 400 || fl.Status > 599) || fl.Count < 0 || fl.SlowMillis < 0 {
				t.Fatalf("invalid fault accepted: %+v", fl)
			}
		}
	})
}

func FuzzParseClientBody(f *testing.F) {
	f.Add([]byte(`{"tenant":"generic","client_id":"a","redirect_uris":["http://x/cb"],"jwks":{"keys":[]}}`))
	f.Add([]byte(`{"client_id":"b","jwks_url":"https://x/jwks","jwks":{}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseClientBody(b)
		if err == nil && c.ClientID == "" {
			t.Fatal("client without id accepted")
		}
		if err == nil {
			s := fuzzSandbox()
			_ = s.RegisterClient("generic", c)
		}
	})
}

func FuzzParseMutateBody(f *testing.F) {
	f.Add([]byte(`{"tenant":"generic","update":3,"delete":1,"types":["Observation"]}`))
	f.Add([]byte(`{"update":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMutateBody(b)
		if err == nil && (m.Update < 0 || m.Delete < 0) {
			t.Fatal("negative counts accepted")
		}
	})
}

func FuzzParseRange(f *testing.F) {
	f.Add("bytes=0-", int64(100))
	f.Add("bytes=10-19", int64(100))
	f.Add("bytes=-5", int64(100))
	f.Add("bytes=5-1", int64(10))
	f.Add("bytes=0-0,5-6", int64(10))
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		start, end, ok := parseRange(h, size)
		if ok && (start < 0 || end > size || start >= end) {
			t.Fatalf("parseRange(%q, %d) = %d, %d", h, size, start, end)
		}
	})
}

func FuzzParseDateParam(f *testing.F) {
	for _, s := range []string{"2020", "ge2020-01", "lt2020-01-02", "eq2020-01-02T03:04:05Z", "gt2020-01-02T03:04:05.123456+02:00", "zz2020", "2020-13"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		b, err := parseDateParam(v)
		if err == nil && !b.lo.Before(b.hi) {
			t.Fatalf("empty range for %q", v)
		}
	})
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"patient/*.read", "user/Observation.rs?category=laboratory", "system/*.cruds", "patient/Observation.sr", "launch/patient", "patient/.r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, ok := parseScope(s)
		if !ok {
			return
		}
		if sc.context != "patient" && sc.context != "user" && sc.context != "system" || sc.typ == "" {
			t.Fatalf("bad parse of %q: %+v", s, sc)
		}
		_ = grantScopes(s, "", true)
	})
}

func FuzzValidateCDSResponse(f *testing.F) {
	f.Add([]byte(`{"cards":[{"summary":"s","indicator":"info","source":{"label":"l"}}]}`))
	f.Add([]byte(`{"cards":[{"suggestions":[{"actions":[{"type":"delete"}]}],"links":[{}],"overrideReasons":[1]}],"systemActions":[{}]}`))
	f.Add([]byte(`{"cards":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cards, problems := ValidateCDSResponse(b)
		if len(problems) == 0 {
			for _, c := range cards {
				if c.Summary == "" || c.Source == "" {
					t.Fatalf("invalid card passed: %+v", c)
				}
			}
		}
	})
}

func fuzzSandbox() *Sandbox {
	s := &Sandbox{cfg: Config{Patients: 3}, tenants: map[string]*tenant{}}
	_ = s.cfg.setDefaults()
	for _, tc := range s.cfg.Tenants {
		s.tenants[tc.Name] = newTenant(s, tc)
		s.order = append(s.order, tc.Name)
	}
	return s
}

// FuzzSearchQuery feeds arbitrary query strings to the search and
// _typeFilter parsers and runs the resulting filter.
func FuzzSearchQuery(f *testing.F) {
	for _, q := range []string{"patient=pat-1&_count=5", "_lastUpdated=ge2020&category=laboratory", "code=http://loinc.org|8867-4,718-7",
		"_id=obs-0-1,obs-0-2", "ah-practice=Organization/a-1.Practice-195901", "date=xx", "patient=Patient/pat-99999"} {
		f.Add(q)
	}
	s := fuzzSandbox()
	t0 := s.tenants["generic"]
	athena := s.tenants["athenahealth"]
	at := &accessToken{scopes: parseScopes("system/*.rs")}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		for _, tn := range []*tenant{t0, athena} {
			flt, err := tn.parseSearch(q, synth.Observation, at)
			if err != nil {
				continue
			}
			n := 0
			tn.walk(tn.ov.load(), []synth.Type{synth.Observation}, flt, func(*resourceState) bool { n++; return n < 50 })
		}
		for _, tf := range splitTypeFilters(raw) {
			if _, qs, ok := strings.Cut(tf, "?"); ok {
				if v, err := url.ParseQuery(qs); err == nil {
					_, _ = t0.parseTypeFilter(v)
				}
			}
		}
	})
}

func FuzzDuration(f *testing.F) {
	for _, s := range []string{"10m", "5", "1.5", "", "-3s", "abc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var d Duration
		_ = d.UnmarshalText([]byte(s))
		_ = d.UnmarshalJSON([]byte(`"` + s + `"`))
	})
}
